"""What the commands print to: the terminal's two consoles, and the one-line error every command ends with
when its input is wrong (a non-zero exit, no traceback)."""
from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> int:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return code
