-- The default profile keeps its key across the upgrade to per-profile credentials.
-- Before 019 every profile's calls carried LLM_API_KEY; 019 gave the rows it found no
-- `api_key_ref`, so an upgraded stack's default profile (role `dialogue`) silently lost
-- its key, while a new install seeds it with the ref `default` (LLM_API_KEY; adapters/
-- profiles.py default_profile). The `dialogue` rows last written before 019 was applied
-- get that ref; rows of other roles stay without one (their endpoints were never checked
-- against a secret: an operator gives them a ref), and a row written since 019 keeps what
-- its writer chose.
UPDATE model_profiles
   SET api_key_ref = 'default'
 WHERE role = 'dialogue'
   AND api_key_ref IS NULL
   AND updated_at < (SELECT applied_at FROM schema_migrations
                      WHERE name = '019_profile_credentials.sql');
