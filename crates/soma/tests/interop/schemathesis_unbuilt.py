"""schemathesis hooks for the edge's routes whose backends are not built yet.

`not_a_server_error` refuses every 5xx; for these routes one 5xx is the
truth: 501 from a backend that answers UNIMPLEMENTED. This check allows that
one answer, and only in that one shape (reason `unimplemented`); any other
5xx, including a 501 for another reason, fails.
"""

import json

import schemathesis


@schemathesis.check
def no_server_error_but_unimplemented(ctx, response, case):
    status = response.status_code
    if status < 500:
        return None
    if status == 501:
        try:
            reason = json.loads(response.content).get("reason")
        except ValueError:
            reason = None
        if reason == "unimplemented":
            return None
        raise AssertionError(f"501 with reason {reason!r}, not an unbuilt backend's 'unimplemented'")
    raise AssertionError(f"server error {status}: {response.content[:300]!r}")
