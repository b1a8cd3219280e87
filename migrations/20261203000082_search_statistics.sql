-- The search filters' plans depend on how many runs a value matches: a context value on 0.1 % of
-- the runs is read from the context index, one on half of them by walking the newest-first index
-- (decision 0092). The default statistics (100 histogram buckets) cannot tell 0.1 % from 1 %;
-- 1,000 can. SET STATISTICS takes a lock that reads and writes do not wait for.
ALTER TABLE operation_runs ALTER COLUMN context SET STATISTICS 1000;
-- The new indexes' expression statistics and the context's finer ones, now rather than at the
-- next autovacuum's analyze: a sample of the table (300,000 rows at most), seconds on millions.
ANALYZE operation_runs;
