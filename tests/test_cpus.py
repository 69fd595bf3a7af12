"""vCPU register decoding, checked against HMP ``info registers -a`` of the corpus.

The decoded device state comes from :func:`load_devices`.  Until the stream
decoder is wired in, it converts the corpus ``analyze-state.json.xz`` (QEMU's
analyzer output, same shape as our decoded state but with values as strings) to
Python values; streams without that file are skipped.
"""

from __future__ import annotations

import json
import lzma
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from migstream.arch import CpuState, cpus_from_devices, decode_cpu, detect_cpu_arch, format_cpus
from migstream.errors import MigstreamError, StreamFormatError, UnsupportedError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

Devices = list[tuple[str, int, Mapping[str, Any]]]

# --------------------------------------------------------------------------
# Input: decoded device state of a corpus stream


def _convert(value: Any) -> Any:
    """analyze-migration.py's printed value -> the Python value our decoder yields."""
    if isinstance(value, dict):
        return {k: _convert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        if value == "nullptr":
            return None
        m = re.fullmatch(r"0x([0-9a-fA-F]+)(?: \((-?\d+)\))?", value)
        if m:
            return int(m.group(2)) if m.group(2) is not None else int(m.group(1), 16)
        if re.fullmatch(r"(?:[0-9a-f]{2}(?: [0-9a-f]{2})*)?", value):
            return bytes.fromhex(value)
    raise ValueError(f"unexpected analyze-state value {value!r}")


def _converted_analyze_state(stream_dir: Path) -> Devices | None:
    state_file = stream_dir / "analyze-state.json.xz"
    sections_file = stream_dir / "sections.json.xz"
    if not state_file.exists() or not sections_file.exists():
        return None
    with lzma.open(state_file, "rt") as fh:
        state = json.load(fh)
    with lzma.open(sections_file, "rt") as fh:
        records = json.load(fh)["records"]
    instance_of: dict[int, int] = {
        rec["id"]: rec["instance"] for rec in records if "id" in rec and "instance" in rec
    }
    devices: Devices = []
    for key, fields in state.items():
        m = re.fullmatch(r"(.*) \((\d+)\)", key)
        assert m, key
        idstr, section_id = m.group(1), int(m.group(2))
        if idstr == "ram":
            continue
        devices.append((idstr, instance_of[section_id], _convert(fields)))
    return devices


def _decoded_by_migstream(stream_dir: Path) -> Devices | None:
    """Device sections decoded by migstream itself (None when it decodes no CPU state)."""
    import tempfile

    import migstream.api
    from migstream.vmstate.values import to_plain

    with tempfile.NamedTemporaryFile(suffix=".mig") as tmp:
        with lzma.open(stream_dir / "stream.mig.xz") as src:
            while chunk := src.read(1 << 22):
                tmp.write(chunk)
        tmp.flush()
        with migstream.api.open(tmp.name) as stream:
            devices: Devices = [
                (d.name, d.instance_id, to_plain(d.state)) for d in stream.devices if d.state is not None
            ]
    return devices if any(idstr == "cpu" for idstr, _, _ in devices) else None


def load_devices(stream_dir: Path) -> Devices | None:
    """Decoded device sections of a stream, or None when they cannot be had yet.

    The one place to choose the source: migstream's own decoder (end to end).
    ``_converted_analyze_state`` (QEMU's analyzer output, converted) is the
    other oracle, used where that output exists.
    """
    return _decoded_by_migstream(stream_dir)


# --------------------------------------------------------------------------
# Ground truth: HMP `info registers -a`

# name -> (value, hex digits printed)
HmpRegs = dict[str, tuple[int, int]]
HmpSeg = dict[str, tuple[int, int]]


class HmpCpu:
    def __init__(self, index: int, arch: str) -> None:
        self.index = index
        self.arch = arch
        self.regs: HmpRegs = {}
        self.segs: dict[str, HmpSeg] = {}


_X86_NAMES = {
    "EAX": "rax", "EBX": "rbx", "ECX": "rcx", "EDX": "rdx",
    "ESI": "rsi", "EDI": "rdi", "EBP": "rbp", "ESP": "rsp",
    "RAX": "rax", "RBX": "rbx", "RCX": "rcx", "RDX": "rdx",
    "RSI": "rsi", "RDI": "rdi", "RBP": "rbp", "RSP": "rsp",
    "EIP": "rip", "RIP": "rip", "EFL": "rflags", "RFL": "rflags", "EFER": "efer",
}  # fmt: skip
_X86_SEG_RE = re.compile(
    r"^(ES |CS |SS |DS |FS |GS |LDT|TR )=([0-9a-f]{4}) ([0-9a-f]+) ([0-9a-f]{8}) ([0-9a-f]{8})"
)
_X86_DT_RE = re.compile(r"^(GDT|IDT)= +([0-9a-f]+) ([0-9a-f]{8})")
_X86_TOKEN_RE = re.compile(r"\b(R\d{1,2} ?|[A-Z]{2,3}\d?)=([0-9a-f]+)\b")
_PPC_TOKEN_RE = re.compile(
    r"\b(NIP|LR|CTR|XER|MSR|SRR[01]|HSRR[01]|PVR|VRSAVE|SPRG\d|CFAR|LPCR|PTCR|DAR|DSISR|FPSCR|HID0)"
    r" +([0-9a-f]+)\b"
)


def _put(regs: HmpRegs, name: str, text: str) -> None:
    regs[name] = (int(text, 16), len(text))


def _parse_block(index: int, lines: Sequence[str]) -> HmpCpu:
    text = "\n".join(lines)
    if re.search(r"\b[ER]AX=", text):
        arch = "x86_64"
    elif "PSTATE=" in text or re.search(r"^ ?PC=", text, re.M):
        arch = "aarch64"
    elif re.search(r"^NIP ", text, re.M):
        arch = "ppc64"
    elif "PSW=mask" in text:
        arch = "s390x"
    else:
        raise ValueError(f"CPU#{index}: unknown register dump format")
    cpu = HmpCpu(index, arch)
    for line in lines:
        if arch == "x86_64":
            m = _X86_SEG_RE.match(line)
            if m:
                name = m.group(1).strip().lower()
                cpu.segs[name] = {
                    "selector": (int(m.group(2), 16), 4),
                    "base": (int(m.group(3), 16), len(m.group(3))),
                    "limit": (int(m.group(4), 16), 8),
                    "flags": (int(m.group(5), 16), 8),
                }
                continue
            m = _X86_DT_RE.match(line)
            if m:
                cpu.segs[m.group(1).lower()] = {
                    "base": (int(m.group(2), 16), len(m.group(2))),
                    "limit": (int(m.group(3), 16), 8),
                }
                continue
            if line.startswith(("FCW=", "FPR", "XMM", "YMM", "ZMM", "Opmask", "Code=", "CCS=")):
                continue
            for name, value in _X86_TOKEN_RE.findall(line):
                name = name.strip()
                if name in _X86_NAMES:
                    _put(cpu.regs, _X86_NAMES[name], value)
                elif re.fullmatch(r"R\d{1,2}|CR\d|DR\d", name):
                    _put(cpu.regs, name.lower(), value)
        elif arch == "aarch64":
            for name, value in re.findall(r"\b(PC|X\d\d|SP|PSTATE|FPCR|FPSR)[=:] ?([0-9a-f]+)\b", line):
                key = f"x{int(name[1:])}" if re.fullmatch(r"X\d\d", name) else name.lower()
                _put(cpu.regs, key, value)
        elif arch == "ppc64":
            m = re.match(r"^GPR(\d\d)((?: [0-9a-f]{16})+)", line)
            if m:
                for i, value in enumerate(m.group(2).split()):
                    _put(cpu.regs, f"r{int(m.group(1)) + i}", value)
                continue
            if line.startswith("FPR"):
                continue
            m = re.match(r"^CR ([0-9a-f]{8})\b", line)
            if m:
                _put(cpu.regs, "cr", m.group(1))
                continue
            for name, value in _PPC_TOKEN_RE.findall(line):
                _put(cpu.regs, name.lower(), value)
        else:
            m = re.match(r"^PSW=mask ([0-9a-f]+) addr ([0-9a-f]+)", line)
            if m:
                _put(cpu.regs, "psw_mask", m.group(1))
                _put(cpu.regs, "psw_addr", m.group(2))
                continue
            for kind, number, value in re.findall(r"\b([RC])(\d\d)=([0-9a-f]+)\b", line):
                _put(cpu.regs, ("r" if kind == "R" else "cr") + str(int(number)), value)
    return cpu


def parse_info_registers(text: str) -> list[HmpCpu]:
    """HMP ``info registers -a`` output -> one HmpCpu per ``CPU#n`` block."""
    cpus: list[HmpCpu] = []
    index: int | None = None
    block: list[str] = []
    for line in text.splitlines():
        m = re.fullmatch(r"CPU#(\d+)\s*", line)
        if m:
            if index is not None:
                cpus.append(_parse_block(index, block))
            index, block = int(m.group(1)), []
        elif index is not None:
            block.append(line)
    if index is not None:
        cpus.append(_parse_block(index, block))
    return cpus


# --------------------------------------------------------------------------
# Comparison as CONTRACT.md describes it

REQUIRED = {
    "x86_64": ["rip", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "cr0"],
    "aarch64": ["pc"] + [f"x{i}" for i in range(8)] + ["pstate"],
    "ppc64": ["nip"] + [f"r{i}" for i in range(8)] + ["msr"],
    "s390x": ["psw_addr"] + [f"r{i}" for i in range(8)] + ["psw_mask"],
}
_RUNNING_X86 = {"cr0", "cr2", "cr3", "cr4", "efer", "cs", "ss", "ds", "fs", "gs", "ldt", "tr", "gdt", "idt"}
SEG_FLAGS_MASK = 0x00FFFF00


def _shown(value: int, digits: int) -> int:
    """``value`` as HMP shows it in ``digits`` hex digits (the 32-bit view truncates)."""
    return value & ((1 << (4 * digits)) - 1)


def compare_cpu(ours: CpuState, hmp: HmpCpu, running: bool = False) -> tuple[list[str], int]:
    """Mismatches (empty when all agree) and the number of registers compared."""
    problems: list[str] = []
    compared = 0
    if ours.arch != hmp.arch:
        return [f"arch: ours {ours.arch}, HMP {hmp.arch}"], 0
    wanted = _RUNNING_X86 if running else None
    for name in REQUIRED[ours.arch]:
        if name not in ours.registers:
            problems.append(f"{name}: missing from ours")
        if name not in hmp.regs:
            problems.append(f"{name}: missing from HMP")
    for name, (value, digits) in hmp.regs.items():
        if name not in ours.registers or (wanted is not None and name not in wanted):
            continue
        mine = ours.registers[name]
        assert isinstance(mine, int), name
        compared += 1
        if _shown(mine, digits) != value:
            problems.append(f"{name}: ours {mine:#x}, HMP {value:#x}")
    for name, seg in hmp.segs.items():
        if name not in ours.registers or (wanted is not None and name not in wanted):
            continue
        mine_seg = ours.registers[name]
        assert isinstance(mine_seg, Mapping), name
        for part, (value, digits) in seg.items():
            compared += 1
            mine_v = mine_seg[part]
            got = mine_v & SEG_FLAGS_MASK if part == "flags" else _shown(mine_v, digits)
            if got != value:
                problems.append(f"{name}.{part}: ours {mine_v:#x}, HMP {value:#x}")
    return problems, compared


# --------------------------------------------------------------------------
# Corpus tests


def _manifest() -> dict[str, dict[str, Any]]:
    path = CORPUS / "MANIFEST.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {s["id"]: s for s in data["streams"]}


def _stream_dirs() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.parent for p in CORPUS.glob("qemu-*/*/info-registers.txt"))


def _stream_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not present")
@pytest.mark.parametrize("stream_dir", _stream_dirs(), ids=_stream_id)
def test_corpus_registers_match_hmp(stream_dir: Path) -> None:
    devices = load_devices(stream_dir)
    if devices is None:
        pytest.skip("no decoded device state for this stream yet (needs the stream decoder)")
    meta = _manifest().get(_stream_id(stream_dir), {})
    running = meta.get("run_state_after") == "running"
    hmp = parse_info_registers((stream_dir / "info-registers.txt").read_text())
    cpus = cpus_from_devices(devices)
    assert [c.index for c in cpus] == [h.index for h in hmp]
    problems: list[str] = []
    for ours, theirs in zip(cpus, hmp, strict=True):
        found, compared = compare_cpu(ours, theirs, running)
        assert compared >= (len(_RUNNING_X86) if running else 10), (ours.index, compared)
        problems += [f"CPU#{ours.index} {p}" for p in found]
    assert not problems, "\n".join(problems)
    # The text output must read back (through the HMP parser) to the same values.
    reread = parse_info_registers(format_cpus(cpus))
    assert [c.index for c in reread] == [c.index for c in cpus]
    for ours, theirs in zip(cpus, reread, strict=True):
        found, _ = compare_cpu(ours, theirs)
        assert not found, found


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not present")
def test_corpus_covers_every_arch() -> None:
    seen: set[str] = set()
    for stream_dir in _stream_dirs():
        devices = load_devices(stream_dir)
        if devices is not None:
            seen.update(c.arch for c in cpus_from_devices(devices))
    assert seen == {"x86_64", "aarch64", "ppc64", "s390x"}


# --------------------------------------------------------------------------
# Synthetic tests


def _x86_state(**overrides: Any) -> dict[str, Any]:
    seg = {"selector": 0x10, "base": 0x1000, "limit": 0xFFFFF, "flags": 0x00CF9300}
    state: dict[str, Any] = {
        "env.regs": [i * 0x1111 for i in range(16)],
        "env.eip": 0xFFFFFFFF_80001234,
        "env.eflags": 0x246,
        "env.hflags": (1 << 15) | (1 << 14) | (1 << 7) | 3,
        "env.segs": [dict(seg) for _ in range(6)],
        "env.ldt": dict(seg, flags=0x8200),
        "env.tr": dict(seg, flags=0x8B00),
        "env.gdt": dict(seg, flags=0),
        "env.idt": dict(seg, flags=0),
        "env.cr[0]": 0x80050033,
        "env.cr[2]": 0xFFFF_8000_0000_0000,
        "env.cr[3]": 0x1000,
        "env.cr[4]": 0x6F0,
        "env.dr": [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400],
        "env.a20_mask": -1,
        "env.efer": 0xD01,
    }
    state.update(overrides)
    return state


def test_x86_synthetic_64bit_view() -> None:
    state = _x86_state(**{"env.regs": [-1] + [0] * 15})
    (cpu,) = cpus_from_devices([("cpu_common", 0, {"halted": 1}), ("cpu", 0, state)])
    assert cpu.arch == "x86_64"
    assert cpu.registers["rax"] == 0xFFFF_FFFF_FFFF_FFFF
    assert cpu.registers["rip"] == 0xFFFFFFFF_80001234
    assert cpu.registers["cs"] == {"selector": 0x10, "base": 0x1000, "limit": 0xFFFFF, "flags": 0x00CF9300}
    assert cpu.registers["gdt"] == {"base": 0x1000, "limit": 0xFFFFF}
    assert cpu.extra["halted"] == 1
    text = format_cpus([cpu])
    assert text.startswith("\nCPU#0\nRAX=ffffffffffffffff")
    assert "HLT=1" in text and "CPL=3" in text
    (reread,) = parse_info_registers(text)
    problems, compared = compare_cpu(cpu, reread)
    assert not problems and compared > 40


def test_x86_synthetic_32bit_view() -> None:
    cpu = decode_cpu(1, _x86_state(**{"env.hflags": 0xB0, "env.efer": 0}))
    text = format_cpus([cpu])
    assert text.startswith("\nCPU#1\nEAX=00000000")
    assert "EIP=80001234" in text
    (reread,) = parse_info_registers(text)
    problems, _ = compare_cpu(cpu, reread)
    assert not problems


def test_cpus_sorted_by_instance_and_others_ignored() -> None:
    devices: Devices = [
        ("cpu", 1, _x86_state()),
        ("apic", 0, {"id": 0}),
        ("cpu", 0, _x86_state(**{"env.eip": 5})),
    ]
    cpus = cpus_from_devices(devices)
    assert [c.index for c in cpus] == [0, 1]
    assert cpus[0].registers["rip"] == 5


def test_missing_field_is_located() -> None:
    state = _x86_state()
    del state["env.cr[3]"]
    with pytest.raises(StreamFormatError) as info:
        cpus_from_devices([("cpu", 2, state)])
    assert info.value.field == "env.cr[3]"
    assert "instance 2" in str(info.value)


def test_malformed_fields() -> None:
    with pytest.raises(StreamFormatError) as info:
        decode_cpu(0, _x86_state(**{"env.eip": "0x10"}))
    assert info.value.field == "env.eip"
    with pytest.raises(StreamFormatError) as info:
        decode_cpu(0, _x86_state(**{"env.dr": [0] * 7}))
    assert info.value.field == "env.dr"
    segs = _x86_state()["env.segs"]
    del segs[2]["base"]
    with pytest.raises(StreamFormatError) as info:
        decode_cpu(0, _x86_state(**{"env.segs": segs}))
    assert info.value.field == "env.segs[2].base"
    with pytest.raises(UnsupportedError):
        decode_cpu(0, _x86_state(**{"env.regs": [0] * 8}))


def test_unknown_arch() -> None:
    with pytest.raises(UnsupportedError):
        detect_cpu_arch({"foo": 1})
    with pytest.raises(MigstreamError):
        cpus_from_devices([("cpu", 0, {"foo": 1})])
    with pytest.raises(UnsupportedError):
        cpus_from_devices([], arch="mips")


def test_aarch64_synthetic() -> None:
    state = {
        "env.regs": [0] * 16,
        "env.xregs": list(range(31)) + [0xFFFF_0000_1234_5670],
        "env.pc": 0x4008_0000,
        "cpsr": bytes.fromhex("600003c5"),
        "env.sp_el": [0, 0, 0, 0],
        "power_state": b"\x00",
        "cpu/vfp": {"fpscr": bytes.fromhex("03000010")},
    }
    (cpu,) = cpus_from_devices([("cpu", 0, state)])
    assert cpu.arch == "aarch64"
    assert cpu.registers["sp"] == 0xFFFF_0000_1234_5670
    assert cpu.registers["pstate"] == 0x600003C5
    assert cpu.registers["x30"] == 30
    assert cpu.registers["fpcr"] == 0x03000000 and cpu.registers["fpsr"] == 0x10
    text = format_cpus([cpu])
    assert "PSTATE=600003c5 -ZC- EL1h" in text
    (reread,) = parse_info_registers(text)
    problems, compared = compare_cpu(cpu, reread)
    assert not problems and compared >= 35
    aarch32 = decode_cpu(0, dict(state, cpsr=bytes.fromhex("000001d3"), **{"env.regs": list(range(16))}))
    assert aarch32.registers["pc"] == 15 and aarch32.registers["cpsr"] == 0x1D3
    assert "x0" not in aarch32.registers
    assert "R15=0000000f" in format_cpus([aarch32])


def test_ppc64_synthetic() -> None:
    spr = [0] * 1024
    spr[1], spr[8], spr[9], spr[26] = 0x20000000, 0x1234, 0x5678, 0x9ABC
    state = {
        "env.gpr": [-1] + list(range(1, 32)),
        "env.crf": [4, 0, 0, 0, 0, 0, 0, 8],
        "env.nip": 0x100,
        "env.spr": spr,
        "env.msr": 0x8000000000003000,
    }
    (cpu,) = cpus_from_devices([("cpu", 0, state)])
    assert cpu.arch == "ppc64"
    assert cpu.registers["r0"] == 0xFFFF_FFFF_FFFF_FFFF
    assert cpu.registers["cr"] == 0x40000008
    assert (cpu.registers["xer"], cpu.registers["lr"], cpu.registers["ctr"]) == (0x20000000, 0x1234, 0x5678)
    (reread,) = parse_info_registers(format_cpus([cpu]))
    problems, compared = compare_cpu(cpu, reread)
    assert not problems and compared >= 38


def test_s390x_synthetic() -> None:
    state = {
        "env.regs": list(range(16)),
        "env.psw.mask": 0x0706_0001_8000_0000,
        "env.psw.addr": 0x10000,
        "env.cregs": [0xE0] + [0] * 15,
    }
    (cpu,) = cpus_from_devices([("cpu", 0, state)])
    assert cpu.arch == "s390x"
    assert cpu.registers["cr0"] == 0xE0
    (reread,) = parse_info_registers(format_cpus([cpu]))
    problems, compared = compare_cpu(cpu, reread)
    assert not problems and compared == 34


def test_parse_info_registers_ppc_header_on_nip_line() -> None:
    text = (
        "\nCPU#0\nNIP 0000000000000100   LR 0000000000000000 CTR 0000000000000000 "
        "XER 0000000000000000 CPU#0\nMSR 8000000000000000 HID0 0000000000000000\n"
        "CR 40000008  [ G  -  -  -  -  -  -  L  ]     RES 000@ffffffffffffffff\n"
    )
    (cpu,) = parse_info_registers(text)
    assert cpu.arch == "ppc64" and cpu.regs["nip"] == (0x100, 16) and cpu.regs["cr"] == (0x40000008, 8)
