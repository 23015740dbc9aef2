"""The torch-free CPU probe and scheme records: which int8 weight range each CPU computes
exactly, the default a build picks, and `check` refusing an artifact the running CPU would
compute wrongly (one line naming the problem and the fix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtimes import cpu
from runtimes.manifest import ArtifactError
from runtimes.schemes import SCHEMES, Scheme, SchemeError, default_weight_range, require_cpu_support, scheme_for

# The first entries of real /proc/cpuinfo files, cut to the lines the probe reads.
X86_AVX2 = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-6700 CPU\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t: avx512_vnni\n"
X86_VNNI = "model name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
X86_AVX_VNNI = "model name\t: 12th Gen Intel(R) Core(TM) i7-1265U\nflags\t\t: avx2 avx_vnni\n"
X86_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
ARM_DOTPROD = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
ARM_V8_0 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"


@pytest.mark.parametrize("text,arch,exact,kernel", [
    (X86_AVX2, "x86_64", False, "x86_64 avx2 (no vnni)"),
    (X86_VNNI, "x86_64", True, "x86_64 avx512_vnni"),
    (X86_AVX_VNNI, "x86_64", True, "x86_64 avx_vnni"),
    (X86_AMX, "x86_64", True, "x86_64 avx512_vnni+amx_int8"),
    (ARM_DOTPROD, "aarch64", True, "aarch64 asimddp"),
    (ARM_V8_0, "aarch64", False, "aarch64 (no int8 dot product)"),
    ("", "x86_64", None, "x86_64 unknown"),
])
def test_probe_reads_the_first_processor(text, arch, exact, kernel, tmp_path):
    info = cpu.parse_cpuinfo(text, arch)
    assert info.exact_int8_dot is exact and info.int8_kernel == kernel
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu.probe(path).flags == info.flags
    assert json.loads(json.dumps(info.to_dict()))["exact_int8_dot"] is exact


def test_probe_of_this_machine_is_consistent():
    info = cpu.probe()
    assert info.arch
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the probe is the parse of this machine's own cpuinfo
        assert info == cpu.parse_cpuinfo(cpuinfo.read_text(errors="replace"), info.arch)


def test_default_weight_range_per_target_and_cpu():
    avx2, amx = cpu.parse_cpuinfo(X86_AVX2, "x86_64"), cpu.parse_cpuinfo(X86_AMX, "x86_64")
    unknown = cpu.parse_cpuinfo("", "x86_64")
    assert [default_weight_range("onnxruntime", c) for c in (avx2, amx, unknown)] == ["7bit", "full", "7bit"]
    assert default_weight_range("tensorrt", avx2) == default_weight_range("ort-mobile", avx2) == "full"
    with pytest.raises(SchemeError, match="unknown target 'coreml'"):
        default_weight_range("coreml")


def test_check_refuses_full_range_on_a_cpu_that_saturates():
    avx2, vnni = cpu.parse_cpuinfo(X86_AVX2, "x86_64"), cpu.parse_cpuinfo(X86_VNNI, "x86_64")
    full = scheme_for("onnxruntime", 8, weight_range="full", cpu=vnni)
    require_cpu_support(full, vnni)
    require_cpu_support(scheme_for("onnxruntime", 8, cpu=avx2), avx2)  # built here: 7-bit
    require_cpu_support(SCHEMES["w8a16"], avx2)  # weight-only int8: float kernels, nothing to saturate
    with pytest.raises(SchemeError) as info:
        require_cpu_support(full, avx2)
    message = str(info.value)
    assert "\n" not in message and "x86_64 avx2 (no vnni)" in message and "--weight-range 7bit" in message
    require_cpu_support(full, cpu.parse_cpuinfo("", "x86_64"))  # unknown features: not refused


def test_check_artifact_refuses_before_running(hand_artifact, tmp_path, monkeypatch):
    """`check` on a full-range int8 artifact, on a CPU whose ORT kernels saturate: a UserError
    before anything runs, and no parity.json."""
    from runtimes.errors import UserError
    from runtimes.parity import check_artifact

    folder = tmp_path / "artifact"
    shutil.copytree(hand_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["scheme"] = scheme_for("onnxruntime", 8, weight_range="full").to_dict()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(cpu, "probe", lambda *a, **k: cpu.parse_cpuinfo(X86_AVX2, "x86_64"))
    with pytest.raises(UserError, match="saturates full-range int8 weights"):
        check_artifact(folder)
    assert not (folder / "parity.json").exists()
    monkeypatch.setattr(cpu, "probe", lambda *a, **k: cpu.parse_cpuinfo(X86_AMX, "x86_64"))
    assert check_artifact(folder, raise_on_failure=False).comparisons


def test_scheme_records_are_torch_free_and_complete():
    for name, scheme in SCHEMES.items():
        record = scheme.to_dict()
        assert Scheme.from_dict(json.loads(json.dumps(record))) == scheme
        assert record["bits"] == scheme.bits and record["placement"] in ("onnxruntime", "tensorrt")
    with pytest.raises(ArtifactError, match="not a scheme record"):
        Scheme.from_dict(["w8a8"])


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("placement"), "scheme w8a8: the record lacks field[(]s[)] placement [(]re-export the artifact with this qsched-export version"),
    (lambda r: [r.pop(key) for key in ("int8_attention", "float_dtype")], "lacks field[(]s[)] float_dtype, int8_attention [(]"),
    (lambda r: r.update(sparsity=2), "scheme w8a8: the record has unknown field[(]s[)] sparsity [(]re-export"),
    (lambda r: [r.pop("conv"), r.update(sparsity=2)], "lacks field[(]s[)] conv and has unknown field[(]s[)] sparsity"),
    (lambda r: r["linear"].pop("reduce_range"), r"scheme w8a8 \(linear\): the record lacks field\(s\) reduce_range"),
    (lambda r: r["conv"].update(sparsity=2), r"scheme w8a8 \(conv\): the record has unknown field\(s\) sparsity"),
    (lambda r: r.update(linear=[8]), r"scheme w8a8 \(linear\): the layer record is a list"),
    (lambda r: r.update(int8_attention="false"), "scheme w8a8: int8_attention is 'false', not true or false"),
    (lambda r: r.update(bits=4), r"scheme w8a8: its bits 4 is not what its layers give \(8\)"),
    (lambda r: r.update(weight_range="7bit"), r"scheme w8a8: its weight_range '7bit' is not what its layers give \('full'\)"),
])
def test_incomplete_scheme_records_are_refused(change, message):
    """A manifest's scheme record with a field missing or unknown (another version wrote it) is an
    ArtifactError of one line naming the fields and the fix, never filled in with defaults."""
    record = json.loads(json.dumps(SCHEMES["w8a8"].to_dict()))
    change(record)
    with pytest.raises(ArtifactError, match=message) as info:
        Scheme.from_dict(record)
    assert "\n" not in str(info.value)


def test_check_refuses_an_artifact_whose_scheme_record_is_incomplete(hand_artifact, tmp_path):
    """`check` on an artifact whose manifest's scheme lacks a field: the ArtifactError, no parity.json."""
    from runtimes.parity import check_artifact

    folder = tmp_path / "artifact"
    shutil.copytree(hand_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["scheme"]["placement"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"scheme w8a8: the record lacks field\(s\) placement"):
        check_artifact(folder)
    assert not (folder / "parity.json").exists()


def test_text_weights_are_part_of_the_scheme():
    scheme = scheme_for("tensorrt", 4, text_weights="int8")
    record = scheme.to_dict()
    assert record["text_weights"] == "int8" and Scheme.from_dict(json.loads(json.dumps(record))) == scheme
    assert scheme.text_scheme == SCHEMES["w8a16"] and scheme_for("tensorrt", 4).text_scheme == SCHEMES["fp32"]
    assert scheme.weight_range == "full" and scheme.describe().endswith("; text encoders int8 weights")
    # A manifest written before the option lacks the field: refused, as any incomplete record.
    with pytest.raises(ArtifactError, match=r"lacks field\(s\) text_weights"):
        Scheme.from_dict({k: v for k, v in record.items() if k != "text_weights"})
    with pytest.raises(SchemeError, match="text weights must be one of float, int8, got 'fp8'"):
        scheme_for("onnxruntime", 32, text_weights="fp8")
