import subprocess
import sys


def test_runtime_and_cli_import_neither_torch_nor_diffusers():
    code = (
        "import sys, fastimg, fastimg.diffusion.pipeline, fastimg.cli.main\n"
        "import fastimg.backends.onnxruntime\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
