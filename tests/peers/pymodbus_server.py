"""An independent Modbus TCP server (pymodbus) for smeltwatch's poller tests.

Holding registers 0..15 hold the float 123.456 in the four byte orders (ABCD at 0, CDAB at 2,
BADC at 4, DCBA at 6), then -1234.5 as f32 ABCD at 8, u32 4000000000 ABCD at 10, i16 -42 at 12,
u16 65000 at 13. Input registers 0..3 hold f64 -9876.54321 ABCD. Coils 0..3 are 1,0,1,1.
The words are computed here with Python's struct module, independently of smeltwatch's decoder.

Binds 127.0.0.1:0 and prints `PORT <n>` on stdout once it accepts connections; stops when stdin
closes (the test process ends).
"""
import asyncio
import struct
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer


def words_be(fmt, value):
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def swap_bytes(words):
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def holding():
    abcd = words_be("f", 123.456)
    cdab = list(reversed(abcd))
    badc = swap_bytes(abcd)
    dcba = swap_bytes(cdab)
    regs = abcd + cdab + badc + dcba
    regs += words_be("f", -1234.5)
    regs += words_be("I", 4_000_000_000)
    regs += words_be("h", -42)
    regs += words_be("H", 65000)
    return regs


async def main():
    # pymodbus data blocks are addressed from 1 internally (address 0 in a request maps to 1).
    device = ModbusDeviceContext(
        co=ModbusSequentialDataBlock(1, [1, 0, 1, 1] + [0] * 12),
        di=ModbusSequentialDataBlock(1, [0] * 16),
        hr=ModbusSequentialDataBlock(1, holding() + [0] * 16),
        ir=ModbusSequentialDataBlock(1, words_be("d", -9876.54321) + [0] * 16),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", 0))
    await server.listen()
    port = server.transport.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
