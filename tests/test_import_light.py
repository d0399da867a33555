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


def test_the_command_line_loads_no_array_image_or_model_library_before_a_command_runs():
    # `fastimg --help` and argument errors stay instant: numpy, PIL, pydantic and the engines'
    # runtimes load inside the commands that need them.
    code = (
        "import sys, fastimg.cli\n"
        "heavy = ('numpy', 'PIL', 'pydantic', 'onnxruntime', 'openvino')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
