-- vlm-audit dashboard views over every run under one output root (docs/dashboards.md).
--
-- ${OUT} stands for the output root: a local folder or s3://bucket/prefix. auditing.dashboards.create_views
-- fills it in, runs a "source" block only where that table has files (else it creates a stand-in
-- without rows and with the same columns), then every "view" block. By hand: replace ${OUT} and run
-- the file (every source table must then exist under the root).
--
-- Blocks start with "-- source: <name>" or "-- view: <name>"; each holds one statement. Tables are read
-- by column name, so parts written by older versions (without a newer column) read as NULL there;
-- create_views adds a column that no part has yet as NULL (run by hand, such views fail to bind).

-- source: runs
CREATE OR REPLACE VIEW runs AS
WITH documents AS (
    SELECT *,
           -- run.json times are ISO 8601 with an offset; dashboards get plain UTC timestamps
           try_cast(started_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC'  AS started,
           try_cast(finished_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS finished
    FROM read_json('${OUT}/runs/run_id=*/run.json',
                   columns = {status: 'VARCHAR', attempt: 'BIGINT', config: 'JSON', manifest_uri: 'VARCHAR',
                              model_id: 'VARCHAR', model_revision: 'VARCHAR', code_version: 'VARCHAR',
                              schema_version: 'VARCHAR', counts: 'JSON', timings: 'JSON',
                              started_at: 'VARCHAR', finished_at: 'VARCHAR'},
                   hive_partitioning = true, hive_types = {'run_id': VARCHAR})
)
SELECT run_id,
       status,
       attempt,
       -- the canonical URI the run read; config.manifest is the manifest as it was given
       coalesce(manifest_uri, config ->> 'manifest')                            AS manifest,
       model_id,
       model_revision,
       config ->> 'method'                                                      AS method,
       -- runs written before the aggregation settings were nested kept group_by at the top
       array_to_string(CAST(coalesce(config -> 'aggregation' -> 'group_by', config -> 'group_by')
                            AS VARCHAR[]), ',')                                AS group_by,
       code_version,
       schema_version,
       try_cast(counts ->> 'items' AS BIGINT)                                   AS n_items,
       try_cast(counts ->> 'ok' AS BIGINT)                                      AS n_ok,
       try_cast(counts ->> 'failed' AS BIGINT)                                  AS n_failed,
       try_cast(counts ->> 'errors' AS BIGINT)                                  AS n_errors,
       try_cast(counts ->> 'targets' AS BIGINT)                                 AS n_targets,
       try_cast(counts ->> 'manifest_errors' AS BIGINT)                         AS n_manifest_errors,
       try_cast(counts ->> 'shards' AS BIGINT)                                  AS n_shards,
       try_cast(counts ->> 'shards_failed' AS BIGINT)                           AS n_shards_failed,
       try_cast(counts ->> 'shards_deferred' AS BIGINT)                         AS n_shards_deferred,
       try_cast(timings ->> 'total_seconds' AS DOUBLE)                          AS total_seconds,
       epoch(finished - started)                                                AS duration_seconds,
       started_at,
       finished_at,
       coalesce(started, finished)                                              AS created_at,
       config
FROM documents;

-- source: answers
CREATE OR REPLACE VIEW answers AS
SELECT * FROM read_parquet('${OUT}/answers/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: tokens
CREATE OR REPLACE VIEW tokens AS
SELECT * FROM read_parquet('${OUT}/tokens/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

-- source: clusters
CREATE OR REPLACE VIEW clusters AS
SELECT * FROM read_parquet('${OUT}/clusters/**/*.parquet', hive_partitioning = true, hive_types = {'run_id': VARCHAR}, union_by_name = true);

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
           WHERE f.rule IN (SELECT rule FROM ${RULES} WHERE marks = 'cohort_trust') AND f.run_id = t.run_id
             AND f.grouping = t.grouping AND f.cohort = t.cohort AND f.target_class = t.target_class
             AND f.method = t.method AND f.metric = 'peak_in_' || coalesce(t.reference, '${OCCLUSION}') || '_evidence'
       ) AS not_trustworthy
FROM cohort_trust AS t
LEFT JOIN runs ON runs.run_id = t.run_id
WHERE t.method <> '${PIXEL_OCCLUSION}';

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

-- view: cohort_trend
-- Each cohort against the rest of its run, run after run of one manifest: the governance chart is
-- `difference` (with ci_low/ci_high) against created_at, one line per cohort.
CREATE OR REPLACE VIEW cohort_trend AS
SELECT runs.manifest,
       c.grouping,
       c.cohort,
       c.target_class,
       c.metric,
       c.run_id,
       runs.created_at,
       row_number() OVER (PARTITION BY runs.manifest, c.grouping, c.cohort, c.target_class, c.metric
                          ORDER BY runs.created_at, c.run_id)              AS run_index,
       runs.status,
       runs.model_id,
       runs.model_revision,
       runs.method,
       c.cohort_mean,
       c.rest_mean,
       c.difference,
       c.ci_low,
       c.ci_high,
       c.p_above,
       c.n_cohort,
       c.n_rest,
       EXISTS (
           SELECT 1 FROM flags AS f
           WHERE f.rule IN (SELECT rule FROM ${RULES} WHERE marks = 'cohort_comparisons' AND metric = c.metric)
             AND f.run_id = c.run_id
             AND f.grouping = c.grouping AND f.cohort = c.cohort AND f.target_class = c.target_class
             AND f.method NOT LIKE '%(faithfulness sample)'
       )                                                                   AS flagged
FROM cohort_comparisons AS c
LEFT JOIN runs ON runs.run_id = c.run_id;

-- view: item_drilldown
-- One row per (run, item, whole-answer or word target, image), with the overlay and report paths;
-- items without such a target (failed ones) have one row with NULL target columns.
CREATE OR REPLACE VIEW item_drilldown AS
WITH targets AS (
    SELECT *,
           CASE WHEN target_kind = '${ANSWER}' THEN '${ANSWER}' ELSE '${WORD}-' || word END AS target_name,
           -- overlay_images in tasks/records.py: the item's first image has no suffix, image k
           -- `-image<k>`; a volume's three slices with the most relevance `-slice<n>` (1-based),
           -- `-volume<g>-slice<n>` where the item has several images or volumes
           CASE WHEN slice_index IS NULL THEN
                    CASE WHEN image_index = 0 THEN '' ELSE '-image' || image_index END
                WHEN row_number() OVER (PARTITION BY run_id, item_id, target_kind, word, image_group
                                        ORDER BY study_share DESC, image_index) <= 3 THEN
                    CASE WHEN min(image_group) OVER item_target < max(image_group) OVER item_target
                         THEN '-volume' || image_group ELSE '' END || '-slice' || format('{:03d}', slice_index + 1)
           END AS image_suffix
    FROM tokens
    WHERE target_kind IN ('${ANSWER}', '${WORD}')
    WINDOW item_target AS (PARTITION BY run_id, item_id, target_kind, word)
), named AS (
    SELECT *,
           target_name || image_suffix AS overlay_name,
           -- storage.overlay_key: unsafe characters become '_', and a changed name gets 8 hex
           -- characters of the original's sha256
           coalesce(nullif(left(ltrim(regexp_replace(target_name || image_suffix, '[^A-Za-z0-9._-]+', '_', 'g'),
                                      '.'), 100), ''), '_') AS safe_name
    FROM targets
)
SELECT a.run_id,
       runs.created_at,
       runs.manifest,
       a.item_id,
       a.row_number,
       coalesce(a.image_uris[t.image_group + 1], a.image_uri)                   AS image_uri,
       a.question,
       a.answer,
       a.status,
       a.metadata,
       CASE WHEN t.target_kind = '${WORD}' THEN lower(t.word) ELSE t.target_kind END AS target_class,
       t.target_kind,
       t.word,
       t.image_index,
       t.image_label,
       t.slice_index,
       t.n_slices,
       t.study_share,
       t.image_share,
       t.region_shares.${BORDER}                                                AS ${BORDER}_share,
       t.region_shares.${CORNERS}                                               AS ${CORNERS}_share,
       ${LUNG_SHARE}                                                            AS lung_share,
       t.region_shares,
       t.entropy,
       t.top10_mass,
       t.roi_share,
       t.roi_hit,
       (SELECT string_agg(DISTINCT f.rule, ',' ORDER BY f.rule) FROM flags AS f
        WHERE f.scope = '${ITEM_SCOPE}' AND f.run_id = a.run_id AND f.item_id = a.item_id) AS item_flags,
       -- where the run's overlay policy wrote a picture (every target when run.json does not say)
       CASE WHEN t.image_suffix IS NOT NULL AND CASE runs.config ->> 'overlays'
                     WHEN 'none' THEN false
                     WHEN '${ANSWER}' THEN t.target_kind = '${ANSWER}'
                     WHEN 'findings' THEN t.target_kind = '${ANSWER}'
                         OR list_contains(CAST(runs.config -> 'findings' AS VARCHAR[]), lower(t.word))
                     ELSE true END
            THEN '${OUT}/overlays/run_id=' || a.run_id || '/' || a.item_id || '/'
                 || CASE WHEN t.safe_name = t.overlay_name THEN t.safe_name
                         ELSE t.safe_name || '-' || left(sha256(t.overlay_name), 8) END || '.png'
       END                                                                      AS overlay_path,
       '${OUT}/report/run_id=' || a.run_id || '/index.html'                     AS report_path
FROM answers AS a
LEFT JOIN named AS t ON t.run_id = a.run_id AND t.item_id = a.item_id
LEFT JOIN runs ON runs.run_id = a.run_id;

-- view: errors_per_run
-- Error rows per run, stage and error type (runs without errors have no rows).
CREATE OR REPLACE VIEW errors_per_run AS
SELECT e.run_id,
       runs.created_at,
       runs.manifest,
       runs.status,
       runs.n_items,
       e.stage,
       e.error_type,
       count(*)                         AS n_errors,
       arg_min(e.message, e.occurred_at) AS first_message
FROM errors AS e
LEFT JOIN runs ON runs.run_id = e.run_id
GROUP BY e.run_id, runs.created_at, runs.manifest, runs.status, runs.n_items, e.stage, e.error_type;

-- view: flag_counts
-- Flags per run and rule, zero-filled: every run (run.json or flags) with every rule of the registry
-- (auditing.rules.RULES) and any other rule a run raised.
CREATE OR REPLACE VIEW flag_counts AS
WITH rules AS (
    SELECT rule FROM ${RULES}
    UNION
    SELECT DISTINCT rule FROM flags
), run_ids AS (
    SELECT run_id FROM runs
    UNION
    SELECT DISTINCT run_id FROM flags
), counted AS (
    SELECT run_id, rule, count(*) AS n_flags FROM flags GROUP BY ALL
)
SELECT r.run_id,
       runs.created_at,
       runs.manifest,
       runs.status,
       runs.method,
       rules.rule,
       coalesce(counted.n_flags, 0)                                         AS n_flags,
       EXISTS (SELECT 1 FROM cohort_stats AS s WHERE s.run_id = r.run_id) AS aggregated
FROM run_ids AS r
CROSS JOIN rules
LEFT JOIN counted ON counted.run_id = r.run_id AND counted.rule = rules.rule
LEFT JOIN runs ON runs.run_id = r.run_id;

-- view: latest_runs
-- The latest completed run of each manifest, with its flag counts.
CREATE OR REPLACE VIEW latest_runs AS
SELECT runs.*,
       (SELECT count(*) FROM flags AS f WHERE f.run_id = runs.run_id)                          AS n_flags,
       (SELECT count(*) FROM flags AS f WHERE f.run_id = runs.run_id AND f.scope = '${COHORT_SCOPE}') AS n_cohort_flags
FROM runs
WHERE status = 'completed'
QUALIFY row_number() OVER (PARTITION BY manifest ORDER BY created_at DESC, run_id DESC) = 1;

-- view: strategy_clusters
-- One row per strategy cluster of each run: its size, where its 2-D embedding sits, whether it raised
-- a flag (and the flag's message), and its mean map's picture.
CREATE OR REPLACE VIEW strategy_clusters AS
SELECT c.run_id,
       runs.created_at,
       runs.manifest,
       c.answer_class,
       c.cluster,
       count(*)                                                               AS n_items,
       avg(c.embedding_x)                                                     AS embedding_x,
       avg(c.embedding_y)                                                     AS embedding_y,
       f.metric IS NOT NULL                                                   AS flagged,
       f.metric,
       f.value,
       f.baseline,
       f.message,
       '${OUT}/cluster_maps/run_id=' || c.run_id || '/cluster-' || lpad(CAST(c.cluster AS VARCHAR), 3, '0')
           || '.png'                                                          AS mean_map_path
FROM clusters AS c
LEFT JOIN runs ON runs.run_id = c.run_id
LEFT JOIN (SELECT flags.* FROM flags JOIN ${RULES} ON rules.rule = flags.rule AND rules.marks = 'clusters') AS f
       ON f.run_id = c.run_id AND f.scope = '${CLUSTER_SCOPE}' AND f.cohort = CAST(c.cluster AS VARCHAR)
GROUP BY ALL;

-- view: study_summary
-- Volumes and longitudinal pairs per cohort (cohort_studies; the slice profiles stay there).
CREATE OR REPLACE VIEW study_summary AS
SELECT s.run_id,
       runs.created_at,
       runs.manifest,
       s.grouping,
       s.cohort,
       s.target_class,
       s.n_volume_items,
       s.slice_position_mean,
       s.slice_position_ci_low,
       s.slice_position_ci_high,
       s.outside_body_mean,
       s.outside_body_ci_low,
       s.outside_body_ci_high,
       s.n_longitudinal_items,
       s.prior_share_mean,
       s.prior_share_ci_low,
       s.prior_share_ci_high,
       s.n_barely_prior,
       s.barely_prior_rate,
       s.barely_prior_ci_low,
       s.barely_prior_ci_high,
       EXISTS (
           SELECT 1 FROM flags AS f
           WHERE f.rule IN (SELECT rule FROM ${RULES} WHERE marks = 'cohort_studies') AND f.run_id = s.run_id
             AND f.grouping = s.grouping
             AND f.cohort = s.cohort AND f.target_class = s.target_class
       ) AS change_ignores_prior
FROM cohort_studies AS s
LEFT JOIN runs ON runs.run_id = s.run_id;
