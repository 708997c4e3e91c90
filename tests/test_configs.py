"""Every shipped YAML parses against the code (class paths resolve, argument names and types check)."""

from pathlib import Path

import pytest

from kdlight.cli import KDLightCLI

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


class ParseOnly(KDLightCLI):
    """Parses and validates a config without building models or reading data."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def test_configs_exist():
    names = {str(p.relative_to(p.parents[2])) if "glue" in p.parts else p.name for p in CONFIGS}
    assert {"glue/sst2/teacher.yaml", "glue/mnli/kd.yaml"} <= names and len(CONFIGS) >= 20


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2] if "glue" in p.parts else p.parents[1])))
def test_config_parses(config):
    cli = ParseOnly(subclass_mode_model=True, subclass_mode_data=True, args=["--config", str(config)], run=False)
    assert cli.config["model"]["class_path"].startswith("kdlight.")
    assert cli.config["data"]["class_path"].startswith("kdlight.")
