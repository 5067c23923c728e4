"""bench/timing.py: the CPU line bench/export_speed.py prints beside its ratios."""

import sys
from pathlib import Path

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


def test_cpu_description_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    assert cpu_description(tmp_path / "absent")  # (platform.processor() or machine(): never empty)
