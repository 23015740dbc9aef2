"""The calibration room's prompts (a module of its own, not conftest: test modules import it by name)."""

PROMPTS = ["two small red circles on a blue background", "a green square"]
