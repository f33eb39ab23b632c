"""Memory budgets (issue 18, bug 7): a C compile for a Cortex-M target whose arena or weights do
not fit the target's RAM / flash is a warning naming the largest buffers and what would shrink
them, an error (exit 2, nothing written) with --fallback error; a model that fits says nothing,
and a model over the qemu board's RAM is refused before it is built."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import memory_plan
from qc.backends.c.runner import build_model, load_report
from qc.cli import main
from qc.errors import QCError
from qc.targets import load_target
from qc.tools.budget import check, fmt_bytes


def detector_stem(path, channels: int = 16) -> str:
    """Conv -> Relu -> GlobalAveragePool on an image of symbolic size, as a detector's exporter
    writes it (x: [1, 3, h, w]): the arena is two [1, C, h, w] float maps."""
    rng = np.random.RandomState(0)
    w = numpy_helper.from_array((rng.randn(channels, 3, 3, 3) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["feat"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["feat"], ["act"], name="relu"),
             helper.make_node("GlobalAveragePool", ["act"], ["y"], name="gap")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, channels, 1, 1])], [w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def wide_gemm(path, n_in: int = 1024, n_out: int = 512) -> str:
    """One float Gemm with n_in x n_out weights (2 MB for the defaults): weights over the M4's flash."""
    w = numpy_helper.from_array(np.random.RandomState(1).randn(n_in, n_out).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "fc",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, n_in])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, n_out])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_memory_tables_cite_sources_and_bracket_the_typical_part():
    m4, m55, a76 = load_target("cortex-m4").memory, load_target("cortex-m55").memory, load_target("cortex-a76").memory
    assert (m4.ram, m4.flash, m4.ram_range, m4.flash_range) == (192 << 10, 1 << 20, (128 << 10, 384 << 10),
                                                                 (512 << 10, 2 << 20))
    assert "STM32F407" in m4.source and m4.enforce
    assert m55.ram_range[1] == int(13.5 * (1 << 20)) and "Alif" in m55.source
    assert a76.ram >= 1 << 30 and not a76.enforce     # DRAM in GB: reported, not checked
    assert load_target("x86-avx2").memory is None


def test_arena_over_the_m4_budget_warns(tmp_path, capsys):
    model = detector_stem(tmp_path / "det.onnx")
    assert main(["compile", model, "--target", "cortex-m4", "--shape", "x=1x3x224x224",
                 "-o", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    # feat, which the Relu overwrites in place, and the Conv's im2col panel (27 x 3520 floats:
    # pixel blocks sized to a tenth of the conv's input + output)
    arena = 16 * 224 * 224 * 4 + 27 * 3520 * 4
    assert f"arena (RAM): {arena} bytes" in out
    assert (f"qc: warning: the model does not fit cortex-m4: arena 3.43 MB ({arena} bytes) > RAM 192 KB of the "
            "typical part (parts: 128 KB to 384 KB), more than any of them\n") in err
    assert ("  largest arena buffers: 'feat' 3.06 MB (f32[1, 16, 224, 224], from stem (Conv)), "
            "'s4' 371 KB (f32[95040], from stem (Conv))\n") in err
    assert re.search(r"to shrink it: smaller inputs \(the arena grows with them: --shape x=1x3x224x224 now; .*\); "
                     r"int8 activations \(--quant w8a8: .*\); --emit onnx .*cortex-m55", err), err
    assert "weights" not in err.splitlines()[0]    # 1.7 KB of weights fit the flash
    assert load_report(tmp_path / "c")["arena_bytes"] == arena


def test_fallback_error_is_exit_2_and_writes_nothing(tmp_path, capsys):
    model = detector_stem(tmp_path / "det.onnx")
    assert main(["compile", model, "--target", "cortex-m4", "--shape", "x=1x3x224x224", "--fallback", "error",
                 "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qc: error: {model}: the model does not fit cortex-m4: arena 3.43 MB ")
    assert "largest arena buffers: 'feat' 3.06 MB" in err and "(or --fallback warn to write it anyway)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_a_model_that_fits_says_nothing(tmp_path, capsys):
    model = detector_stem(tmp_path / "det.onnx")
    assert main(["compile", model, "--target", "cortex-m4", "--shape", "x=1x3x32x32", "--fallback", "error",
                 "-o", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "arena (RAM): 72448 bytes" in out and "warning" not in err and err == ""  # feat + im2col panel
    # the same big input on a Cortex-A target: RAM in GB, not checked
    assert main(["compile", model, "--target", "cortex-a76", "--shape", "x=1x3x224x224",
                 "-o", str(tmp_path / "a76")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_weights_over_flash(tmp_path, capsys):
    model = wide_gemm(tmp_path / "fc.onnx")
    assert main(["compile", model, "--target", "cortex-m4", "-o", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert ("the model does not fit cortex-m4: weights 2 MB (2097152 bytes) > flash 1 MB of the typical part "
            "(parts: 512 KB to 2 MB)") in err
    assert "int8 weights (--quant w8a8 or w8)" in err
    assert "arena" not in err.splitlines()[0]


def test_check_matches_the_plan_emit_c_reports(tmp_path):
    """memory_plan lowers without writing: the numbers are emit_c's, and check() compares them."""
    import qc

    result = qc.compile(detector_stem(tmp_path / "det.onnx"), target="cortex-m55", shapes={"x": (1, 3, 128, 128)})
    plan = memory_plan(result.module, result.target)
    result.write(str(tmp_path / "c"))
    assert (plan["arena_bytes"], plan["weight_bytes"]) == (result.c_report["arena_bytes"],
                                                          result.c_report["weight_bytes"])
    assert result.budget == check(result.target, plan, quantized=False).as_dict()
    assert result.budget["fits"] and result.warnings == []        # 2 MB arena = the M55's 2 MB
    result.close()
    assert [fmt_bytes(n) for n in (512, 1536, 196608, 6422528, 1 << 30)] == \
        ["512 bytes", "1.5 KB", "192 KB", "6.12 MB", "1 GB"]


def test_a_model_over_the_qemu_board_ram_is_not_run(tmp_path, capsys):
    """mps2-an386 (qc's Cortex-M4 board) links the harness into 16 MB of RAM: a 26 MB arena is
    refused before anything is built (feat, overwritten in place by the Relu, and the im2col panel)."""
    model = detector_stem(tmp_path / "det.onnx")
    assert main(["compile", model, "--target", "cortex-m4", "--shape", "x=1x3x600x600", "--emit-harness",
                 "-o", str(tmp_path / "c")]) == 0
    assert "does not fit cortex-m4" in capsys.readouterr().err
    report = load_report(tmp_path / "c")
    with pytest.raises(QCError, match=r"the model needs \d+ bytes of RAM \(arena 25775424, .* more than the "
                                      r"16777216 of qemu's mps2-an386 board; it would not run there"):
        build_model(report, "cortex-m", "cortex-m4")
    assert not list((tmp_path / "c").glob("harness-*"))


def test_target_file_memory_errors(tmp_path):
    bad = tmp_path / "soc.toml"
    bad.write_text('name = "soc"\nbackend = "c"\n\n[memory]\nram = 65536\nram_range = [131072, 262144]\n'
                   'flash = 1048576\nsource = "datasheet"\n')
    with pytest.raises(QCError, match=r"soc.toml:6: memory.ram_range: expected \[smallest, largest\] bytes around "
                                      r"ram = 65536"):
        load_target(str(bad))
    bad.write_text('name = "soc"\n[memory]\nram = 65536\nflash = 1048576\n')
    with pytest.raises(QCError, match=r"memory.source: missing"):
        load_target(str(bad))


def test_qc_check_reports_memory(tmp_path, capsys):
    """qc check --target cortex-m4: the weights against the flash (the arena too once every shape
    is static); on a Cortex-A target the figures are stated, not checked."""
    import json

    fc = wide_gemm(tmp_path / "fc.onnx")
    assert main(["check", fc, "--target", "cortex-m4", "--brief"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("memory: cortex-m4 parts have RAM 128 KB to 384 KB and flash 512 KB to 2 MB (typical: "
                     "192 KB / 1 MB)")
    assert lines[at + 1:at + 3] == [
        "  weights 2 MB, arena 0 bytes",
        "  warning: weights 2 MB (2097152 bytes) > flash 1 MB of the typical part (parts: 512 KB to 2 MB)"]
    assert main(["check", detector_stem(tmp_path / "det.onnx"), "--target", "cortex-m4", "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert memory["arena_bytes"] is None and memory["weight_bytes"] == 16 * 27 * 4 + 16 * 4 and memory["fits"]
    assert memory["lines"][1] == ("  weights 1.75 KB, arena not known (symbolic input shapes; --shape NAME=AxB "
                                  "gives their sizes)")
    assert main(["check", fc, "--target", "cortex-a76", "--brief"]) == 0
    out = capsys.readouterr().out
    assert "memory: cortex-a76 parts have RAM 2 GB to 16 GB and flash 8 GB to 256 GB (typical: 4 GB / 32 GB), " \
           "not checked\n  weights 2 MB, arena not known (not checked here)\n" in out and "warning" not in out


def test_qc_targets_prints_the_memory(capsys):
    assert main(["targets", "cortex-m4"]) == 0
    assert ("  memory: RAM 192 KB (128 KB to 384 KB), flash 1 MB (512 KB to 2 MB), checked  -- ST datasheets: "
            "STM32F407 (DS8626)") in capsys.readouterr().out
    assert main(["targets", "cortex-a53"]) == 0
    out = capsys.readouterr().out
    assert "  memory: RAM 1 GB (512 MB to 4 GB), flash 8 GB (4 GB to 128 GB), not checked  -- " in out
    assert main(["targets", "x86-avx2"]) == 0
    assert "memory:" not in capsys.readouterr().out


def test_suggestions_follow_what_was_already_done():
    """A compile that is already quantized is not told to quantize again: float buffers left in
    the arena point at --quant-ops; int8 weights over the flash point at 4-bit weights."""
    m4 = load_target("cortex-m4")
    big = [{"name": "onehot", "bytes": 2 << 20, "node": "oh (Cast)", "kernel": "cast", "dtype": "f32",
            "shape": [1, 2048, 257]}]
    r = check(m4, {"arena_bytes": 4 << 20, "weight_bytes": 2 << 20, "largest": big}, quantized=True)
    assert not r.fits and len(r.problems) == 2
    assert "int8 activations for the largest buffers, which are still float (--quant-ops" in "; ".join(r.shrink)
    assert "--quant w8a8: a quarter" not in "; ".join(r.shrink)
    assert "4-bit weights (--quant w4)" in "; ".join(r.shrink)
    fits = check(m4, {"arena_bytes": 100 << 10, "weight_bytes": 500 << 10, "largest": big}, quantized=True)
    assert fits.fits and fits.shrink == [] and fits.problems == []
    assert check(load_target("cortex-a53"), {"arena_bytes": 1 << 40, "weight_bytes": 1 << 40}, quantized=False).fits
