"""Insanic settings module for the Python iniesta peers (INSANIC_SETTINGS_MODULE=peer_settings).

Configuration only: every setting is taken from an environment variable of the same name, so
the Rust test (host/tests/it/conformance.rs) configures the Python service exactly as a settings
module would. Values that parse as JSON (lists, numbers, booleans, dicts) are used as such.
"""

import json
import os

_NAMES = (
    "SERVICE_NAME",
    "ENVIRONMENT",
    "INIESTA_INITIALIZATION_TYPE",
    "INIESTA_SNS_PRODUCER_GLOBAL_TOPIC_ARN",
    "INIESTA_SNS_ENDPOINT_URL",
    "INIESTA_SQS_ENDPOINT_URL",
    "INIESTA_SQS_CONSUMER_FILTERS",
    "INIESTA_SQS_QUEUE_NAME",
    "INIESTA_SQS_RECEIVE_MESSAGE_WAIT_TIME_SECONDS",
    "INIESTA_SQS_RECEIVE_MESSAGE_MAX_NUMBER_OF_MESSAGES",
    "INIESTA_LOCK_RETRY_COUNT",
    "INIESTA_LOCK_TIMEOUT",
    "INIESTA_CACHES",
)

for _name in _NAMES:
    if _name in os.environ:
        _raw = os.environ[_name]
        try:
            globals()[_name] = json.loads(_raw)
        except ValueError:
            globals()[_name] = _raw

ENFORCE_APPLICATION_VERSION = False
