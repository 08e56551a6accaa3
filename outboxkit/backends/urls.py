"""Read the database URL a deployment hands over.

:func:`database_url` checks a database URL and accepts the forms platforms give
(``postgres://``, as Heroku's ``DATABASE_URL`` has it); ``SqlRepository.from_url``, the CLI's
``--database-url`` and the demo all read database URLs through it.
"""

from __future__ import annotations

import sqlalchemy as sa

from outboxkit.errors import ConfigurationError

#: Schemes SQLAlchemy does not know, as platforms write them -> SQLAlchemy's driver name.
#: ``postgres://`` is what Heroku, Render, Fly.io and others put in ``DATABASE_URL``
#: (SQLAlchemy 1.4 dropped the alias); psycopg2 is the driver outboxkit installs.
_SCHEME_ALIASES = {"postgres": "postgresql+psycopg2"}

#: What to say when a scheme is not a database outboxkit supports.
_SUPPORTED = "postgresql:// (or postgres://), mysql+pymysql:// or sqlite:///path"


def database_url(url: str | sa.URL) -> sa.URL:
    """``url`` as a SQLAlchemy URL, with platform aliases (``postgres://``) resolved.

    Raises :class:`ConfigurationError` in one line, with the password masked, when the URL
    cannot be parsed or names a database SQLAlchemy does not know (``NoSuchModuleError``
    and ``ArgumentError`` would print the URL as given, password included). A driver that
    is not installed is reported when the engine is created.
    """
    if isinstance(url, sa.URL):
        parsed = url
    else:
        try:
            parsed = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
            # Not echoed: where it cannot be parsed, the password cannot be found to mask.
            start = url.split(":", 1)[0][:20]
            raise ConfigurationError(
                f"cannot parse the database URL (starting {start!r}): use {_SUPPORTED}"
            ) from None
    backend, plus, driver = parsed.drivername.partition("+")
    alias = _SCHEME_ALIASES.get(backend.lower())
    if alias is not None:
        parsed = parsed.set(drivername=f"{alias.partition('+')[0]}+{driver}" if plus else alias)
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigurationError(
            f"unknown database URL scheme {parsed.drivername!r} in {shown!r}: use {_SUPPORTED}"
        ) from None
    return parsed
