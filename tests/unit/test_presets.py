"""The shipped presets: each composes and builds (on the meta device) with the parameter count its header
states; the old flat names compose to the same configs; a user's own config folder adds presets."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import only_error_line
from toolkit.cli.train import main as train_main
from toolkit.config.compose import compose_train_config, config_dir, preset_files, presets
from toolkit.config.preset_names import RENAMED, current_name, presets_by_folder
from toolkit.config.ranges import check_ranges
from toolkit.config.validate import check_task_and_model
from toolkit.errors import ConfigError
from toolkit.train.setup import parameter_summary

SHIPPED = preset_files(config_dir())
HEADER_KEYS = ("Reproduces", "Expected", "Parameters", "Launch")


def header(name: str) -> dict[str, str]:
    """The header block's `# KEY: text` entries (continuation lines `#   ...` joined)."""
    entries: dict[str, str] = {}
    key = None
    for line in SHIPPED[name].read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"# (\w+): (.*)", line)
        if match and match.group(1) in HEADER_KEYS:
            key = match.group(1)
            entries[key] = match.group(2)
        elif key and line.startswith("#   "):
            entries[key] += " " + line[4:]
        else:
            key = None
    return entries


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_preset_composes_validates_and_builds_with_the_parameter_count_its_header_states(name):
    """Composition and the whole validation pass, then a dry run's model on the meta device (no memory, no time;
    the vocabulary from the preset, as a dry run before the data is prepared); the header says what the preset
    reproduces and how to launch it."""
    entries = header(name)
    assert set(entries) == set(HEADER_KEYS), f"{SHIPPED[name]}: header lacks {set(HEADER_KEYS) - set(entries)}"
    assert f"tk-train config={name}" in entries["Launch"]
    cfg = compose_train_config(name, ["data=/nonexistent"])
    check_ranges(cfg)  # already part of composing: asserted here so that a preset can never skip it
    assert cfg.run_dir and cfg.max_update >= 1
    _, model = check_task_and_model(cfg)
    stated = int(re.match(r"([\d,]+)", entries["Parameters"]).group(1).replace(",", ""))
    assert parameter_summary(model)["parameters"] == stated


def test_every_old_name_points_at_a_shipped_preset_and_the_names_follow_one_pattern():
    assert set(RENAMED.values()) <= set(SHIPPED) and sorted(SHIPPED) == presets()
    assert not set(RENAMED) & set(SHIPPED)
    for name in SHIPPED:  # FOLDER/[MODEL_]DATASET[_VARIANT][_SIZE]: the size, if any, last
        folder, _, rest = name.partition("/")
        assert (
            folder in ("adaptive_span", "all_attention", "baselines", "combinations", "mae", "pkm", "t64")
            and "/" not in rest
        )
        assert "tiny_" not in rest and "large_" not in rest, name


@pytest.mark.parametrize("old", ["t12_text8", "text8_char_tiny", "pkm_text8_deep_baseline", "adaptive_span_tiny_text8"])
def test_old_names_compose_to_the_same_config(old):
    new = current_name(old)
    assert new != old
    assert OmegaConf.to_yaml(compose_train_config(old, [])) == OmegaConf.to_yaml(compose_train_config(new, []))


def test_shipped_presets_name_other_presets_by_their_full_path():
    """A relative name in a defaults list is looked up in config/ itself, where only the old names are."""
    for name, path in [*SHIPPED.items(), *(("_base", p) for p in config_dir().glob("config/*/_*.yaml"))]:
        for entry in yaml.safe_load(path.read_text()).get("defaults", []):
            if isinstance(entry, str) and entry != "_self_":
                assert entry.startswith("/config/") and entry[len("/config/") :] in {
                    *SHIPPED,
                    "adaptive_span/_base",
                    "all_attention/_base",
                }, (name, entry)


def test_presets_by_folder():
    assert presets_by_folder(["t64/t12_text8", "mine", "t64/t64_text8"]) == {
        "": ["mine"],
        "t64": ["t12_text8", "t64_text8"],
    }


@pytest.fixture
def user_configs(tmp_path, monkeypatch):
    """A user's config folder with one preset built on a shipped one (by its new name) and one on an old name."""
    folder = tmp_path / "my_configs"
    (folder / "config" / "mine").mkdir(parents=True)
    for name, base in (("short", "/config/baselines/transformer_lm_text8_tiny"), ("old_base", "text8_char_tiny")):
        (folder / "config" / "mine" / f"{name}.yaml").write_text(
            textwrap.dedent(f"""\
            # @package _global_
            defaults:
              - {base}
              - _self_
            run_dir: runs/mine
            max_update: 7
            """)
        )
    monkeypatch.setenv("TOOLKIT_CONFIG_PATH", str(folder))
    return folder


def test_a_users_config_folder_adds_presets(user_configs, capsys):
    shipped = OmegaConf.to_container(compose_train_config("baselines/transformer_lm_text8_tiny", []))
    for name in ("mine/short", "mine/old_base"):
        cfg = OmegaConf.to_container(compose_train_config(name, []))
        assert (cfg.pop("run_dir"), cfg.pop("max_update")) == ("runs/mine", 7)
        assert cfg == {k: v for k, v in shipped.items() if k not in ("run_dir", "max_update")}
    assert train_main(["--help"]) == 0
    assert "  mine/: old_base, short\n" in capsys.readouterr().out


def test_user_config_folder_errors(user_configs, tmp_path, monkeypatch, capsys):
    bad = user_configs / "config" / "mine" / "bad.yaml"
    bad.write_text("# @package _global_\ndefaults:\n  - /config/t64/t12_txt8\n  - _self_\n")
    assert train_main(["config=mine/bad"]) == 2
    assert only_error_line(capsys.readouterr().err).startswith(
        f"error: preset 'mine/bad': {bad} selects unknown config 't64/t12_txt8' (did you mean: t64/t12_text8, "
    )
    (user_configs / "config" / "t64").mkdir()
    (user_configs / "config" / "t64" / "t12_text8.yaml").write_text("# @package _global_\n")
    with pytest.raises(ConfigError, match=r"t64/t12_text8.yaml: config=t64/t12_text8 is a shipped preset's name"):
        presets()
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("TOOLKIT_CONFIG_PATH", str(missing))
    assert train_main(["config=mine/short"]) == 2
    assert only_error_line(capsys.readouterr().err) == f"error: TOOLKIT_CONFIG_PATH={missing}: no such folder"
    monkeypatch.setenv("TOOLKIT_CONFIG_PATH", str(tmp_path))
    assert train_main(["config=mine/short"]) == 2
    assert only_error_line(capsys.readouterr().err) == (
        f"error: TOOLKIT_CONFIG_PATH={tmp_path}: no config/ folder in it (presets go in {tmp_path}/config/NAME.yaml)"
    )
