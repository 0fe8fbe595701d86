"""Attack (issue 12, item 11): the dashboard's sign-in from another site (login CSRF), a cookie that is the
raw API token and outlives sign-out, and a verifier API token signing in.

Expected: a state-changing dashboard request (sign-in, sign-out) that does not come from the dashboard's
own pages is refused (403, no cookie, no session change); the cookie holds a random server-side session id
(HttpOnly, SameSite=Strict, path /ui), never the token, and stops working in every API worker process at
sign-out, at expiry and when its token is revoked; a verifier API token cannot sign in. Driven through
`tl serve --workers 2` over HTTP, with the headers a browser sends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from served_store import API, SUB, ServedStore, bearer, served_store, serving
from sqlalchemy import text

from trustedlaunch.control.tokens import ATTESTATION_API_PATH, create_token
from trustedlaunch.store.models import utc_now

COOKIE = "tl_dashboard"
TOKENS = "/providers/Microsoft.TrustedLaunch/tokens"
REQUESTS_PER_CHECK = 8  # new connections each: the kernel spreads them over both worker processes


def sign_in(url: str, token: str, **headers: str) -> httpx.Response:
    """POST the login form as a browser would, with `headers` (Origin, Sec-Fetch-Site)."""
    return httpx.post(f"{url}/ui/login", data={"token": token, "next": "/ui/"}, headers=headers)


def signed_in(url: str, cookie: str) -> bool:
    """Whether the cookie signs in: every one of several requests gets the clusters page; none does when
    every one is sent to the login form (a mix fails the test)."""
    answers = {
        httpx.get(f"{url}/ui/", cookies={COOKIE: cookie}).status_code for _ in range(REQUESTS_PER_CHECK)
    }
    assert len(answers) == 1 and answers <= {200, 303}, answers
    return answers == {200}


def session_cookie(response: httpx.Response) -> str:
    """The session id a successful sign-in set, after checking the cookie's attributes."""
    assert response.status_code == 303, response.text
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/ui" in header, header
    return response.cookies[COOKIE]


# what Chromium sends with the dashboard's own forms (its pages send no referrer, so Origin is "null")
SAME_ORIGIN = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}


def test_cross_site_sign_in_and_sign_out_are_refused(tmp_path: Path) -> None:
    with served_store(tmp_path) as store, serving(store) as url:
        admin = store.admin_token
        cross_site = (
            {"Origin": "https://evil.example"},
            {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
            {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed or no-referrer page
            {"Origin": url, "Sec-Fetch-Site": "same-site"},
            {"Origin": f"{url}.evil.example"},
            {},  # neither header: not a page of the dashboard either
        )
        for headers in cross_site:
            response = sign_in(url, admin, **headers)
            assert response.status_code == 403, (headers, response.text)
            assert "set-cookie" not in response.headers, headers

        cookie = session_cookie(sign_in(url, admin, **SAME_ORIGIN))
        assert signed_in(url, cookie)
        # another site cannot sign the browser out either (SameSite keeps the cookie out; even with it...)
        refused = httpx.post(
            f"{url}/ui/logout", cookies={COOKIE: cookie}, headers={"Origin": "https://evil.example"}
        )
        assert refused.status_code == 403
        assert signed_in(url, cookie)
        # a browser without fetch metadata: its Origin must be the dashboard's own
        assert session_cookie(sign_in(url, admin, Origin=url))


def test_the_cookie_is_a_server_side_session_ended_by_sign_out_expiry_and_revocation(
    tmp_path: Path,
) -> None:
    with served_store(tmp_path) as store, serving(store) as url:
        admin = store.admin_token
        # the raw API token in the cookie signs nothing in
        assert not signed_in(url, admin)
        cookie = session_cookie(sign_in(url, admin, **SAME_ORIGIN))
        assert admin not in cookie and len(cookie) >= 32
        assert signed_in(url, cookie)

        # sign-out ends the session in every worker: the old cookie, replayed, no longer works
        response = httpx.post(f"{url}/ui/logout", cookies={COOKIE: cookie}, headers=SAME_ORIGIN)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
        assert not signed_in(url, cookie)

        # an expired session no longer signs in
        expiring = session_cookie(sign_in(url, admin, **SAME_ORIGIN))
        assert signed_in(url, expiring)
        past = (utc_now() - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLite's form
        with store.sessions.begin() as session:
            session.execute(text("UPDATE ui_sessions SET expires_at = :past"), {"past": past})
        assert not signed_in(url, expiring)

        # revoking the token ends its sessions
        created = httpx.post(
            f"{url}{TOKENS}",
            json={"name": "operator", "scope": f"/subscriptions/{SUB}"},
            headers=bearer(admin),
            params=API,
        )
        assert created.status_code == 201, created.text
        operator = session_cookie(sign_in(url, created.json()["properties"]["token"], **SAME_ORIGIN))
        assert signed_in(url, operator)
        assert httpx.delete(f"{url}{TOKENS}/operator", headers=bearer(admin), params=API).status_code in (
            200,
            204,
        )
        assert not signed_in(url, operator)


def verifier_token(store: ServedStore) -> str:
    with store.sessions.begin() as session:
        return create_token(session, "relying-party", ATTESTATION_API_PATH)


def test_a_verifier_token_cannot_sign_in(tmp_path: Path) -> None:
    with served_store(tmp_path) as store:
        token = verifier_token(store)
        with serving(store) as url:
            response = sign_in(url, token, **SAME_ORIGIN)
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
            assert "verifier API only" in response.text
            # the token itself still works where it belongs
            challenge = httpx.post(f"{url}{ATTESTATION_API_PATH}/challenge", headers=bearer(token))
            assert challenge.status_code == 200, challenge.text
