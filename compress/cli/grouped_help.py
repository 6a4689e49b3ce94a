"""``compress distill --help`` with its options under the recipe's sections, as a recipe file reads."""

from __future__ import annotations

import click


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its options by :data:`compress.recipe.SECTIONS`."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from compress.recipe import section_of

        grouped: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            section = section_of(param.name or "")
            title = f"{section.title} ({section.name}: in a recipe)" if section and section.name else (
                section.title if section else "Invocation (command line only)")
            grouped.setdefault(title, []).append(record)
        for title, records in grouped.items():
            with formatter.section(title):
                formatter.write_dl(records)
