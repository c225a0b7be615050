"""Who is calling and what they may do: API keys, JWTs, session access, turn admission.

    principal.py   the authenticated caller (subject, tenant, scopes)
    keys.py        API keys in Postgres (hash only), cached in Redis, revocable at once
    jwt.py         bearer JWTs (HS256 secret, or RS256/ES256 from a JWKS URL)
    sessions.py    session claims (first turn wins) and OpenFGA read checks
    admission.py   what a turn passes at the ingress: rate limits, then the session claim
    services.py    the bundle the ingress builds at start-up
    bootstrap.py   `python -m ingress.auth.bootstrap`: the first admin key
See docs/security.md.
"""
