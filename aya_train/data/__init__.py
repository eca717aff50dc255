"""Data: canonical schema (schema), language codes (languages), layouts (presets, preference), readers,
row -> record (records), chunked collection (collect), token lengths (tokens), bad rows (quarantine),
loading + split (loading), the mixture plan (mixture) and its report (mixture_report), and a run's view of
a data set (prepare, used by pipeline.DataCache)."""
