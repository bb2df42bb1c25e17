"""The ``emlive view`` command: the live browser viewer of a running ``emlive serve``."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import typer

from emlive.core.errors import EmliveError

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this component's subcommands to ``app``."""

    @app.command("view")
    def view(
        source: str = typer.Option(
            ..., "--source", "-s", help="The service's output PUB (emlive serve --output), tcp://HOST:PORT."
        ),
        status: str | None = typer.Option(
            None, "--status", help="The service's status PUB (emlive serve --status), for the live figures."
        ),
        port: int = typer.Option(8000, "--port", "-p", help="HTTP port of the page (0: any free port)."),
        host: str = typer.Option(
            "127.0.0.1", "--host", help="Interface to serve on; anything but loopback requires the printed token."
        ),
        max_size: int = typer.Option(
            1024, "--max-size", help="Longest displayed side in pixels; larger frames are block-mean binned."
        ),
    ) -> None:
        """Show the raw and denoised frames of a live `emlive serve --publish-raw` in the browser.

        Prints the page's URL (with its token when --host exposes it beyond this machine). Ctrl-C stops."""
        try:
            from emlive.viewer.server import ViewerServer
        except ImportError as exc:
            raise EmliveError(
                f"the viewer needs its extra packages ({exc.name} is missing): pip install 'emlive[viewer]'"
            ) from exc

        server = ViewerServer(source, status, host=host, port=port, max_size=max_size)
        url = server.start()

        def handler(signum: int, _frame: FrameType | None) -> None:
            logger.info("%s received: stopping the viewer", signal.Signals(signum).name)
            server.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        if server.token is not None:
            logger.warning("serving on %s: anyone with the token in the URL can watch the stream", host)
        typer.echo(f"emlive viewer: {url}", err=False)
        server.wait()
