"""MkDocs hook: fills the reference pages from the code, so that they cannot go stale.

A page line `<!-- generated: cli-help -->` becomes the `--help` of every command of
`tftune.cli.main`; `<!-- generated: recipe-keys -->` becomes the table of recipe keys that
`tftune.recipe.describe_schema()` prints; `<!-- generated: recipes-list -->` becomes what
`tftune recipes list` prints. Run this file to print both:
`python docs/hooks.py cli-help`.
"""

import re
import sys
import tomllib

import click

HELP_WIDTH = 100


def cli_help_markdown() -> str:
    """Every command's `--help`, walked from `tftune.cli.main`, one section per command."""
    from tftune.cli import main

    sections = []

    def walk(command, name, parent):
        context = click.Context(command, info_name=name, parent=parent, terminal_width=HELP_WIDTH,
                                max_content_width=HELP_WIDTH, **command.context_settings)
        title = context.command_path
        sections.append(f"### `{title}`\n\n```text\n{command.get_help(context)}\n```\n")
        if isinstance(command, click.Group):
            for sub_name in command.list_commands(context):
                walk(command.get_command(context, sub_name), sub_name, context)

    walk(main, "tftune", None)
    return "\n".join(sections)


def recipe_keys_markdown() -> str:
    """The recipe keys as a Markdown table, read from `describe_schema()`'s aligned columns."""
    from tftune.recipe import describe_schema

    header, *rows = describe_schema().splitlines()
    starts = [header.index(title) for title in ("key", "type", "default", "help")]
    bounds = list(zip(starts, starts[1:] + [None]))

    def cell(text):
        return text.strip().replace("|", "\\|")

    def default_cell(text):
        try:  # a TOML value such as 20000 or "random"; else a note such as `required`
            tomllib.loads(f"default = {text}")
        except tomllib.TOMLDecodeError:
            return f"*{text}*"
        return f"`{text}`"

    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for row in rows:
        key, kind, default, meaning = (cell(row[start:end]) for start, end in bounds)
        lines.append(f"| `{key}` | {kind} | {default_cell(default)} | {meaning} |")
    return "\n".join(lines) + "\n"


def recipes_list_text() -> str:
    """What `tftune recipes list` prints."""
    from click.testing import CliRunner

    from tftune.cli import main

    result = CliRunner().invoke(main, ["recipes", "list"], catch_exceptions=False)
    return result.output.rstrip("\n")


GENERATORS = {"cli-help": cli_help_markdown, "recipe-keys": recipe_keys_markdown, "recipes-list": recipes_list_text}


MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown, page, config, files):
    """Replaces each marker line (alone on its line) with what its generator writes."""
    return MARKER.sub(lambda match: GENERATORS[match.group(1)](), markdown)


if __name__ == "__main__":
    print(GENERATORS[sys.argv[1]]())
