-- Provider credentials per model profile: `api_key_ref` names a secret the LLM stage reads
-- from MODEL_API_KEYS or $SOMA_HOME/secrets/<ref> (never the secret itself). NULL, the
-- default, means the profile's calls carry no credential: before this, every profile was
-- sent the one LLM_API_KEY, whatever host it named. Profiles that need a key get a ref
-- through PUT /v1/model-profiles (`default` is LLM_API_KEY).
ALTER TABLE model_profiles ADD COLUMN IF NOT EXISTS api_key_ref text DEFAULT NULL;
