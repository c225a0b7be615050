"""Who is calling and what they may do: API keys, JWTs, session access, turn admission.

    principal.py   the authenticated caller (subject, tenant, scopes)
    keys.py        API keys in Postgres (hash only), cached in Redis, revocable at once
    jwt.py         bearer JWTs (HS256 secret, or RS256/ES256 from a JWKS URL)
    jwks.py        the IdP's signing keys: one fetch in flight, backoff after a failure
    throttle.py    failed authentications per address and credential (429 past a limit)
    anonymous.py   the sessions the anonymous caller (auth off) may use
    sessions.py    session claims (adapters/session_claims.py) and OpenFGA read/write checks
    admission.py   what a turn passes at the ingress: rate limits, the session claim, write
    services.py    the bundle the ingress builds at start-up
    bootstrap.py   `python -m ingress.auth.bootstrap`: the bootstrap (operator) key
See docs/security.md.
"""
