"""Hooks for scripts/schemathesis: the one rule of the API that OpenAPI cannot state.

A `since` that is a bare seq ("42") is a cursor for one topic; with several topics in the path
the server refuses it (400: use topic:seq pairs). That rule joins two parameters, the path's
topic list and the query's `since`, and a schema describes each parameter alone. So a
generated case that pairs them is rewritten to what a client would send: the same seq as a
`topic:seq` pair for the first topic of the list (the others start at `all`).
"""

import re

import schemathesis

# The path parameter reaches the hook percent-encoded.
COMMA = re.compile(r",|%2C", re.IGNORECASE)


@schemathesis.hook
def map_case(ctx, case):
    topics = (case.path_parameters or {}).get("topics")
    since = (case.query or {}).get("since")
    if (
        isinstance(topics, str)
        and COMMA.search(topics)
        and isinstance(since, str)
        and since.isascii()
        and since.isdigit()
    ):
        first = COMMA.split(topics, maxsplit=1)[0]
        case.query["since"] = f"{first}:{since}"
    return case
