"""Reads TensorBoard event files back for the tests: every summary value with its step."""
import os
import struct


def summary_values(tb_dir):
    """(step, value) of every summary value in the TFRecord event files of tb_dir, in order."""
    from tensorboardX.proto import event_pb2
    for name in sorted(os.listdir(tb_dir)):
        with open(os.path.join(tb_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                yield event.step, v
