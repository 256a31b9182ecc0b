"""Which shipped model each command uses by default."""

from mimo.utils.paths import default_chat_model_dir, default_model_dir


def test_serve_defaults_to_the_chat_model_where_the_tree_ships_one(tmp_path):
    (tmp_path / "mimo-nano").mkdir()
    (tmp_path / "mimo-nano" / "config.json").write_text("{}")
    assert default_chat_model_dir(tmp_path) == tmp_path / "mimo-nano"  # no chat model: the base one
    (tmp_path / "mimo-nano-chat").mkdir()
    assert default_chat_model_dir(tmp_path) == tmp_path / "mimo-nano"  # an empty folder is not a model
    (tmp_path / "mimo-nano-chat" / "config.json").write_text("{}")
    assert default_chat_model_dir(tmp_path) == tmp_path / "mimo-nano-chat"


def test_the_source_tree_default_is_looked_up_beside_the_base_model():
    assert default_chat_model_dir().parent == default_model_dir().parent
