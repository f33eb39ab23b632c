# lit configuration for the pass tests: `lit -v tests/filecheck` (or pytest tests/test_filecheck.py).
import os
import shutil

import lit.formats

config.name = "qc"  # lit injects `config` and `lit_config` (F821 is off for this file)
# lit >= 23 rejects ShTest(True) (the external shell); lit's internal shell runs our pipes fine.
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".qir"]
config.test_source_root = os.path.dirname(__file__)
config.environment["PATH"] = os.environ.get("PATH", "")
for var in ("HOME", "PYTHONPATH", "VIRTUAL_ENV", "PYENV_VERSION"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
for tool in ("qc", "filecheck"):
    path = shutil.which(tool)
    if path is None:
        lit_config.fatal(f"'{tool}' is not on PATH; install the package with its test extras")
    # a command word only: not the "filecheck" directory inside the expanded %s path
    config.substitutions.append((rf"(?<![\w/.\-]){tool}(?![\w/.\-])", path))
import sys  # noqa: E402

config.substitutions.append(("%python", sys.executable))
