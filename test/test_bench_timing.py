"""bench/timing.py: the CPU line bench/export_speed.py prints beside its ratios."""

import platform
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from timing import cpu_description  # noqa: E402

# Two cores as Linux writes /proc/cpuinfo (key, tab padding, ": ", value; a blank line between processors).
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8
"""


def test_cpu_description_names_the_model_and_the_features_that_change_the_ratios(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert cpu_description(cpuinfo) == "Intel(R) Xeon(R) Processor (avx2, avx512f, avx512_vnni, amx_int8)"
    cpuinfo.write_text(CPUINFO.replace("avx2 avx512f avx512_vnni amx_tile amx_int8", "sse4_2"))
    assert cpu_description(cpuinfo).endswith("(none of avx2/avx512f/avx512_vnni/avx_vnni/amx_int8/amx_bf16)")


# The instruction sets the description names, in its order (int8 dot products, AMX tiles).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def test_cpu_description_takes_the_first_core_and_whole_flag_names(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    # Whole flag names: avx512fp16 and avx512_bf16 are not avx512f, amx_tile is not amx_int8. The second core lists
    # other flags and another name (as a hybrid CPU's small core may): the first core's are taken.
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                       "flags\t\t: amx_bf16 fpu avx512fp16 avx512_bf16 amx_tile avx_vnni avx2\n\n"
                       "processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Atom(TM)\n"
                       "flags\t\t: fpu avx512f amx_int8\n")
    assert cpu_description(cpuinfo) == "Intel(R) Xeon(R) Platinum 8488C (avx2, avx_vnni, amx_bf16)"
    # An AMD Zen 4 core (VNNI from AVX-512, no AMX), its flags out of the description's order
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
                       "flags\t\t: avx512_vnni avx512f avx2 avx512bw\n")
    assert cpu_description(cpuinfo) == "AMD EPYC 9R14 96-Core Processor (avx2, avx512f, avx512_vnni)"
    # No model name (an Arm cpuinfo has none, nor "flags"): the machine name, and none of the features
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n")
    assert cpu_description(cpuinfo) == f"{platform.machine()} (none of {'/'.join(FEATURES)})"


def test_cpu_description_of_this_machine_names_its_model_and_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo here")
    first = cpuinfo.read_text().split("\n\n")[0]  # the first processor's block
    model = re.search(r"^model name\s*:\s*(.*?)\s*$", first, re.M)
    flags = re.search(r"^flags\s*:(.*)$", first, re.M)
    if not model or not flags:
        pytest.skip("this cpuinfo has no model name / flags lines")
    present = [f for f in FEATURES if f in flags.group(1).split()]
    expected = f"{model.group(1)} ({', '.join(present) if present else 'none of ' + '/'.join(FEATURES)})"
    assert cpu_description() == expected


def test_cpu_description_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    assert cpu_description(tmp_path / "absent") == (platform.processor() or platform.machine())
    assert platform.processor() or platform.machine()  # never empty
