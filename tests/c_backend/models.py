"""Test models for the C backend: onnx's light CNNs with random weights, calibration data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def light_cnn(name: str, out: Path, seed: int = 0) -> Path:
    """onnx/backend/test/data/light/light_NAME.onnx with its ConstantOfShape weights folded and
    replaced by random ones (He-scaled, deterministic), so its outputs are not degenerate."""
    from qc.backends.onnx import save_onnx
    from qc.frontend.onnx import import_onnx
    from qc.pm import PassManager

    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    module = import_onnx(str(src))
    PassManager.parse("fold-constants{max-size=100000000,max-growth=100000000},dce").run(module)
    tmp = out.with_suffix(".folded.onnx")
    save_onnx(module, str(tmp))
    model = onnx.load(str(tmp))
    rng = np.random.RandomState(seed)
    for i, t in enumerate(model.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.size < 2:
            continue
        fan_in = int(np.prod(a.shape[1:])) if a.ndim > 1 else a.size
        r = rng.randn(*a.shape).astype(np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
        if a.ndim == 1:
            r = (rng.rand(*a.shape).astype(np.float32) - 0.5) * 0.2
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(r, t.name))
    # IR version 3 lists every initializer as a graph input; the weights are constants here
    names = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 7)
    onnx.save(model, str(out))
    tmp.unlink()
    return out


def image_calibration(path: Path, input_name: str, shape, samples: int = 4, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    np.savez(path, **{input_name: rng.rand(samples, *shape).astype(np.float32)})
    return path
