"""Every shipped YAML parses against the code (class paths resolve, argument names and types check)."""

from pathlib import Path

import pytest

from kdlight.cli import KDLightCLI

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.parent.name != "scale")
# trainer-only add-ons, parsed on top of a full recipe as a user would pass them
SCALE = sorted((ROOT / "scale").glob("*.yaml"))


class ParseOnly(KDLightCLI):
    """Parses and validates a config without building models or reading data."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def test_configs_exist():
    names = {str(p.relative_to(p.parents[2])) if "glue" in p.parts else p.name for p in CONFIGS}
    assert {"glue/sst2/teacher.yaml", "glue/mnli/kd.yaml"} <= names and len(CONFIGS) >= 20


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2] if "glue" in p.parts else p.parents[1]))
)
def test_config_parses(config):
    cli = ParseOnly(subclass_mode_model=True, subclass_mode_data=True, args=["--config", str(config)], run=False)
    assert cli.config["model"]["class_path"].startswith("kdlight.")
    assert cli.config["data"]["class_path"].startswith("kdlight.")


@pytest.mark.parametrize("addon", SCALE, ids=lambda p: p.name)
def test_scale_addons_parse_on_top_of_a_recipe(addon):
    recipe = ROOT / "glue" / "sst2" / "kd.yaml"
    cli = ParseOnly(
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(recipe), "--config", str(addon)],
        run=False,
    )
    assert cli.config["trainer"]["precision"] == "bf16-mixed"
    assert cli.config["model"]["class_path"] == "kdlight.modules.VanillaKD"


def test_layerwise_fsdp_instantiates_on_cpu():
    from transformers.models.bert.modeling_bert import BertLayer

    from kdlight.errors import KDLightError
    from kdlight.strategies import LayerWiseFSDP

    strategy = LayerWiseFSDP(layer_classes=["transformers.models.bert.modeling_bert.BertLayer"])
    assert strategy.layer_classes == {BertLayer}
    assert strategy.kwargs["use_orig_params"] is True
    with pytest.raises(KDLightError, match="cannot import layer class"):
        LayerWiseFSDP(layer_classes=["transformers.NoSuchLayer"])


ZERO_SHOT = [p for p in CONFIGS if "ZeroShotAdversarialKD" in p.read_text()]


@pytest.mark.parametrize("path", ZERO_SHOT, ids=lambda p: str(p.relative_to(ROOT)))
def test_zero_shot_recipes_choose_no_checkpoint_on_labelled_data(path):
    """No task data means none: a zero-shot recipe keeps and exports its final weights; a checkpoint chosen on
    the task's labelled validation split would use task labels."""
    import yaml

    config = yaml.safe_load(path.read_text())
    assert config.get("checkpoint", {}).get("monitor", "val/score") is None
    assert config["model"]["init_args"].get("export_best", True) is False
    assert "--ckpt_path best" not in path.read_text()


def test_every_teacher_path_a_recipe_reads_is_what_a_shipped_recipe_exports():
    """A recipe's ``teacher: runs/.../export`` is a chain a user runs in order (README: ``teacher.yaml`` then
    ``kd.yaml``), so some shipped recipe must write exactly that folder. Without ``export_dir`` an export goes to
    ``<log_dir>/export`` (``lightning_logs/version_N/export``), and the next stage stopped with "model folder not
    found". The one exception is multi_teacher.yaml's second teacher, which its header says how to make."""
    import yaml

    exports, reads = set(), []
    for path in CONFIGS:
        init = (yaml.safe_load(path.read_text()).get("model") or {}).get("init_args") or {}
        exports.add(init.get("export_dir"))
        for teacher in [init.get("teacher"), *(init.get("teachers") or [])]:
            if isinstance(teacher, str) and teacher.startswith("runs/"):
                reads.append((path.name, teacher))
    second = ("multi_teacher.yaml", "runs/noisy/teacher_b/export")
    assert (
        second in reads
        and "--model.init_args.export_dir runs/noisy/teacher_b/export"
        in (ROOT / "noisy" / "multi_teacher.yaml").read_text()
    )
    missing = [
        f"{name} reads {teacher}" for name, teacher in reads if teacher not in exports and (name, teacher) != second
    ]
    assert not missing, f"no shipped recipe exports these: {missing}"
