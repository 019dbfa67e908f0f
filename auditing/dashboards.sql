-- vlm-audit dashboard views over every run under one output root (docs/dashboards.md).
--
-- ${OUT} stands for the output root: a local folder or s3://bucket/prefix. auditing.dashboards.create_views
-- fills it in, runs a "source" block only where that table has files (else it creates a stand-in
-- without rows and with the same columns), then every "view" block. By hand: replace ${OUT} and run
-- the file (every source table must then exist under the root).
--
-- Blocks start with "-- source: <name>" or "-- view: <name>"; each holds one statement. Tables are read
-- by column name, so parts written by older versions (without a newer column) read as NULL there.

-- source: runs
CREATE OR REPLACE VIEW runs AS
SELECT run_id,
       status,
       model_id,
       model_revision,
       config ->> 'method'                                                      AS method,
       started_at,
       finished_at,
       -- run.json times are ISO 8601 with an offset; dashboards get a plain UTC timestamp
       try_cast(coalesce(started_at, finished_at) AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS created_at
FROM read_json('${OUT}/runs/run_id=*/run.json',
               columns = {status: 'VARCHAR', model_id: 'VARCHAR', model_revision: 'VARCHAR', config: 'JSON',
                          started_at: 'VARCHAR', finished_at: 'VARCHAR'},
               hive_partitioning = true, hive_types = {'run_id': VARCHAR});

-- source: answers
CREATE OR REPLACE VIEW answers AS
SELECT * FROM read_parquet('${OUT}/answers/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: tokens
CREATE OR REPLACE VIEW tokens AS
SELECT * FROM read_parquet('${OUT}/tokens/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: faithfulness
CREATE OR REPLACE VIEW faithfulness AS
SELECT * FROM read_parquet('${OUT}/faithfulness/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: cohort_comparisons
CREATE OR REPLACE VIEW cohort_comparisons AS
SELECT * FROM read_parquet('${OUT}/cohort_comparisons/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: errors
CREATE OR REPLACE VIEW errors AS
SELECT * FROM read_parquet('${OUT}/errors/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: cohort_stats
CREATE OR REPLACE VIEW cohort_stats AS
SELECT * FROM read_parquet('${OUT}/cohort_stats/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: cohort_regions
CREATE OR REPLACE VIEW cohort_regions AS
SELECT * FROM read_parquet('${OUT}/cohort_regions/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: cohort_trust
CREATE OR REPLACE VIEW cohort_trust AS
SELECT * FROM read_parquet('${OUT}/cohort_trust/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: cohort_studies
CREATE OR REPLACE VIEW cohort_studies AS
SELECT * FROM read_parquet('${OUT}/cohort_studies/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: flags
CREATE OR REPLACE VIEW flags AS
SELECT * FROM read_parquet('${OUT}/flags/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- view: cohort_region_shares
-- Cohort region shares over time: one row per (run, cohort, target class, region).
CREATE OR REPLACE VIEW cohort_region_shares AS
SELECT r.run_id,
       runs.created_at,
       runs.model_id,
       runs.method,
       r.grouping,
       r.cohort,
       r.target_class,
       r.region,
       r.mean,
       r.ci_low,
       r.ci_high,
       r.n_items
FROM cohort_regions AS r
LEFT JOIN runs ON runs.run_id = r.run_id;

-- view: flags_per_run
-- How many flags each rule raised per run and method (runs without flags have no rows).
CREATE OR REPLACE VIEW flags_per_run AS
SELECT f.run_id,
       runs.created_at,
       f.scope,
       f.rule,
       f.method,
       count(*) AS n_flags
FROM flags AS f
LEFT JOIN runs ON runs.run_id = f.run_id
GROUP BY ALL;

-- view: trust_per_cohort
-- Agreement of each method's maps with each perturbation reference's evidence set, per cohort (the
-- pixel-occlusion rows, a reference checked against the other, stay in cohort_trust). `reference` is
-- NULL (token occlusion) and the evidence columns NULL for runs aggregated with schema version 1.
CREATE OR REPLACE VIEW trust_per_cohort AS
SELECT t.run_id,
       runs.created_at,
       t.grouping,
       t.cohort,
       t.target_class,
       t.method,
       t.reference,
       t.n_items,
       t.n_checkable,
       t.peak_in_evidence_rate,
       t.peak_in_evidence_ci_low,
       t.peak_in_evidence_ci_high,
       t.evidence_mass_mean,
       t.spearman_median,
       t.morf_auc,
       t.lerf_auc,
       t.auc_gap,
       t.randomization_spearman,
       EXISTS (
           SELECT 1 FROM flags AS f
           WHERE f.rule IN ('explanations_not_trustworthy', 'evidence_relocated') AND f.run_id = t.run_id
             AND f.grouping = t.grouping AND f.cohort = t.cohort AND f.target_class = t.target_class
             AND f.method = t.method AND f.metric = 'peak_in_' || coalesce(t.reference, 'occlusion') || '_evidence'
       ) AS not_trustworthy
FROM cohort_trust AS t
LEFT JOIN runs ON runs.run_id = t.run_id
WHERE t.method <> 'pixel_occlusion';

-- view: answer_distribution
-- Answers per cohort: every metadata key/value of the manifest, and the whole run as ('all', 'all').
-- Answers are compared lower-cased and trimmed; only answered items (status 'ok') count.
CREATE OR REPLACE VIEW answer_distribution AS
WITH answered AS (
    SELECT run_id, lower(trim(answer)) AS answer, metadata FROM answers WHERE status = 'ok'
), cohorts AS (
    SELECT run_id, 'all' AS grouping, 'all' AS cohort, answer FROM answered
    UNION ALL
    SELECT run_id, unnest(map_keys(metadata)) AS grouping, unnest(map_values(metadata)) AS cohort, answer
    FROM answered
)
SELECT c.run_id,
       runs.created_at,
       c.grouping,
       c.cohort,
       c.answer,
       count(*) AS n_items,
       count(*) / sum(count(*)) OVER (PARTITION BY c.run_id, c.grouping, c.cohort) AS share
FROM cohorts AS c
LEFT JOIN runs ON runs.run_id = c.run_id
GROUP BY c.run_id, runs.created_at, c.grouping, c.cohort, c.answer;
