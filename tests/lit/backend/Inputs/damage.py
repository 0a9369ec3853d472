"""Damages every quantized-model cache entry (*.q35q) in a directory, for
quant-cache.test: `flip` inverts the last payload byte's low bit,
`truncate` drops the last 7 bytes."""
import glob
import sys

directory, how = sys.argv[1], sys.argv[2]
entries = sorted(glob.glob(f"{directory}/*.q35q"))
if not entries:
    sys.exit(f"no cache entry in {directory}")
for path in entries:
    data = bytearray(open(path, "rb").read())
    if how == "flip":
        data[-1] ^= 1
    elif how == "truncate":
        data = data[:-7]
    else:
        sys.exit(f"unknown damage {how}")
    open(path, "wb").write(data)
