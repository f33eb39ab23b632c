"""The pass manager: pipeline strings, typed options, verification after each pass, instruments."""
import io
from dataclasses import dataclass
from typing import Literal

import pytest

import qc
from conftest import small_mlp
from qc.ir import Op
from qc.pm import Pass, PassContext, PassError, PassManager, PrintIR, Timing, register_pass


@register_pass("test-options")
@dataclass(frozen=True)
class OptionsPass(Pass):
    """Records its options; changes nothing."""

    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["fast", "exact"] = "fast"
    names: tuple[str, ...] = ()
    limit: int | None = None
    label: str = ""

    def run(self, module, ctx: PassContext) -> bool:
        ctx.cache.setdefault("seen", []).append(self)
        return False


@register_pass("test-break-uses")
@dataclass(frozen=True)
class BreakUses(Pass):
    """Inserts an op that reads a value defined after it: the verifier must catch this."""

    def run(self, module, ctx) -> bool:
        first = next(iter(module.graph))
        last = module.graph.ops[-1]
        module.graph.insert_before(first, Op("Relu", [last.result], name="early"))
        return True


@register_pass("test-returns-none")
@dataclass(frozen=True)
class ReturnsNone(Pass):
    def run(self, module, ctx):
        return None


@register_pass("test-crash")
@dataclass(frozen=True)
class Crash(Pass):
    def run(self, module, ctx):
        raise ZeroDivisionError("boom")


@pytest.mark.parametrize("spec", [
    "",
    "test-options",
    "test-options{count=3}",
    "test-options{count=3,ratio=0.25,flag=true,mode=exact}",
    "test-options{names=a,b,c,limit=none},test-options{label=\"x,y{z}\"}",
    "test-options{limit=7},test-options,test-options{flag=false}",
])
def test_pipeline_strings_print_back_exactly(spec):
    assert str(PassManager.parse(spec)) == spec


def test_options_are_converted_to_their_declared_types():
    pm = PassManager.parse('test-options{count=0x10,ratio=1e-3,flag=yes,mode=exact,names=p,q,limit=4,label="a,b"}')
    p = pm.passes[0]
    assert ((p.count, p.ratio, p.flag, p.mode, p.names, p.limit, p.label)
            == (16, 0.001, True, "exact", ("p", "q"), 4, "a,b"))


@pytest.mark.parametrize("spec,message", [
    ("test-options{count=many}", "option 'count' of pass 'test-options' expects an integer, got 'many'"),
    ("test-options{mode=slow}", "option 'mode' of pass 'test-options' expects one of fast|exact, got 'slow'"),
    ("test-options{colour=red}", "pass 'test-options' has no option 'colour'; its options: count, ratio, flag, mode, "
                                 "names, limit, label"),
    ("test-options{count=1", "unbalanced braces or quotes"),
    ("test-options,,dce", "empty pass name"),
    ("no-such-pass", "unknown pass 'no-such-pass'; known passes: "),
])
def test_bad_pipelines_are_clear_errors(spec, message):
    with pytest.raises(qc.QCError) as e:
        PassManager.parse(spec)
    assert message in str(e.value)


def test_verifier_after_each_pass_names_the_pass_and_history():
    module = qc.import_onnx(small_mlp())
    with pytest.raises(PassError) as e:
        PassManager.parse("test-options,test-break-uses").run(module)
    text = str(e.value)
    assert "the IR is invalid after pass 'test-break-uses'" in text
    assert "uses %y before it is defined" in text
    assert "passes run before it: test-options" in text


def test_verify_each_can_be_turned_off():
    module = qc.import_onnx(small_mlp())
    PassManager.parse("test-break-uses", verify_each=False).run(module)


def test_pass_must_return_bool_and_crashes_are_reported():
    with pytest.raises(PassError, match="returned NoneType, expected bool"):
        PassManager.parse("test-returns-none").run(qc.import_onnx(small_mlp()))
    with pytest.raises(PassError) as e:
        PassManager.parse("test-options,test-crash").run(qc.import_onnx(small_mlp()))
    assert "pass 'test-crash' (after test-options) crashed: ZeroDivisionError: boom" in str(e.value)
    assert getattr(e.value, "internal", False)


def test_instruments_print_and_time():
    stream = io.StringIO()
    timing = Timing(stream=io.StringIO())
    pm = PassManager.parse("test-options{count=2},test-options",
                           instruments=[PrintIR(after=frozenset({"test-options"}), stream=stream), timing])
    pm.run(qc.import_onnx(small_mlp()))
    dumps = stream.getvalue()
    assert dumps.count("// -----// IR Dump After test-options{count=2} //----- //") == 1
    assert dumps.count("// -----// IR Dump After test-options //----- //") == 1
    assert [row[0] for row in timing.rows] == ["test-options{count=2}", "test-options"]
    assert "total" in timing.stream.getvalue()


def test_verifier_checks_quantization_parameters():
    from qc.ir.verify import verify

    base = ('module @m {ir_version = 10, opset_import = {"" = 21}} {\n  func @main(%x: i8[4, 8]) -> (i8[4, 8]) {\n'
            '    %y = onnx.Identity(%x) : i8[4, 8] q(QUANT)\n    return %y\n  }\n}\n')
    verify(qc.parse_ir(base.replace("QUANT", "scale = 0.5, zp = -3, axis = 1")))
    for quant, message in [("scale = 0.5, zp = 200", "zero point 200, outside i8's range -128..127"),
                           ("scale = 0.5, zp = 0, axis = 2", "quantized along axis 2, but its rank is 2"),
                           ("scale = 0.0, zp = 0", "scales must be positive"),
                           ("scale = 0.5, zp = 0, block = 32", "blocks need a positive size and an axis")]:
        with pytest.raises(qc.VerifyError, match=message):
            verify(qc.parse_ir(base.replace("QUANT", quant)))


QUANTIZED_WEIGHT = """\
module @m {ir_version = 10, opset_import = {"" = 21}} {
  const @s : SCALE
  const @z : ZP
  const @w : i8[4, 6] q(QUANT) = blob("w", bytes = 24)
  func @main() -> (i8[4, 6]) {
    %y = onnx.Identity(@w) : i8[4, 6]
    return %y
  }
}
"""


def _quantized_weight(scale="f32[6] = blob(\"s\", bytes = 24)", zp="i8[6] = blob(\"z\", bytes = 6)",
                      quant="scale = @s, zp = @z, axis = 1"):
    return qc.parse_ir(QUANTIZED_WEIGHT.replace("SCALE", scale).replace("ZP", zp).replace("QUANT", quant))


def test_verifier_checks_quantization_parameter_values():
    from qc.ir.verify import verify

    verify(_quantized_weight())
    verify(_quantized_weight(scale="f32[] = dense[0.5]", zp="i8[1] = dense[3]", quant="scale = @s, zp = @z"))
    verify(_quantized_weight(scale="f32[2, 6] = blob(\"s\", bytes = 48)", zp="i8[2, 6] = blob(\"z\", bytes = 12)",
                             quant="scale = @s, zp = @z, axis = 0, block = 3"))
    for kwargs, message in [
        ({"scale": "i32[6] = blob(\"s\", bytes = 24)"}, r"%w's scale @s is i32; scales are floating point"),
        ({"zp": "u8[6] = blob(\"z\", bytes = 6)"}, r"%w's zero point @z is u8; the zero point has the storage type i8"),
        ({"scale": "f32[4] = blob(\"s\", bytes = 16)"},
         r"%w's scale @s has shape \[4\]; per-channel parameters along axis 1 need one element per channel \(6\)"),
        ({"zp": "i8[6, 1] = blob(\"z\", bytes = 6)"}, r"%w's zero point @z has shape \[6, 1\]; per-channel"),
        ({"quant": "scale = @s, zp = 0"}, r"%w's scale @s has shape \[6\]; per-tensor parameters are one element"),
        ({"scale": "f32[1, 6] = blob(\"s\", bytes = 24)", "quant": "scale = @s, zp = 0, axis = 0, block = 3"},
         r"%w's scale @s has shape \[1, 6\]; blocks of 3 along axis 0 need \[2, 6\] \(ceil\(4 / 3\) blocks\)"),
    ]:
        with pytest.raises(qc.VerifyError, match=message):
            verify(_quantized_weight(**kwargs))


def test_verifier_finds_quantization_parameters_a_pass_removed():
    from qc.ir.verify import verify

    module = _quantized_weight()
    module.graph.remove_const(module.graph.consts["s"])      # the weight's type still names @s
    with pytest.raises(qc.VerifyError, match=r"main graph: %w's scale @s is not a const or value of this graph "
                                             r"or an enclosing one \(removed or replaced by a pass"):
        verify(module)
