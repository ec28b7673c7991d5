"""The host's extensions, created unbound. The database is deliberately not called `db`: the auto-sync finds it."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

database = SQLAlchemy()
migrate = Migrate()
limiter = Limiter(key_func=get_remote_address)
