"""Prefect flows that wire the stages (no stage logic lives here).

Offline defaults, set before Prefect is imported, unless the user set them: the first start of the
local ephemeral API can take over Prefect's default 20 s timeout, and nothing phones home.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
