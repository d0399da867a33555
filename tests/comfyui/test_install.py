import json

import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.comfyui.install import SHIM

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_install_writes_the_node_folder_comfyui_loads(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    result = CliRunner().invoke(
        cli, ["comfyui", "install", str(tmp_path), "--engines", str(tmp_path / "e")]
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "custom_nodes" / "comfyui-fastimg"
    assert str(folder) in result.output
    assert (folder / "__init__.py").read_text() == SHIM
    meta = tomllib.loads((folder / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert meta["project"]["name"] == "comfyui-fastimg"
    workflow = json.loads((folder / "fastimg_img2img_api.json").read_text())
    assert workflow["2"]["inputs"]["engines_folder"] == str((tmp_path / "e").resolve())
    assert {node["class_type"] for node in workflow.values()} == {
        "LoadImage", "FastimgLoadEngines", "FastimgImg2Img", "FastimgSaveImage"
    }  # fmt: skip
    assert (tmp_path / "input" / workflow["1"]["inputs"]["image"]).is_file()
    page = json.loads((folder / "example_workflows" / "fastimg_img2img.json").read_text())
    widgets = {node["type"]: node["widgets_values"] for node in page["nodes"]}
    assert widgets["FastimgLoadEngines"][0] == str((tmp_path / "e").resolve())
    assert widgets["LoadImage"][0] == workflow["1"]["inputs"]["image"]
    assert len(page["links"]) == 4  # image, engines, image and labels on to the save node
    again = CliRunner().invoke(cli, ["comfyui", "install", str(tmp_path)])  # an update
    assert again.exit_code == 0, again.output


def test_install_refuses_a_folder_that_is_not_comfyui_or_not_ours(tmp_path):
    result = CliRunner().invoke(cli, ["comfyui", "install", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a ComfyUI folder (it has no custom_nodes/)" in result.output
    (tmp_path / "custom_nodes" / "comfyui-fastimg").mkdir(parents=True)
    (tmp_path / "custom_nodes" / "comfyui-fastimg" / "__init__.py").write_text("mine")
    result = CliRunner().invoke(cli, ["comfyui", "install", str(tmp_path)])
    assert result.exit_code == 1 and "is not a folder fastimg wrote" in result.output
    assert (tmp_path / "custom_nodes" / "comfyui-fastimg" / "__init__.py").read_text() == "mine"
