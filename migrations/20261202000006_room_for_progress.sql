-- 30 % of each new page of operation_runs left free, for the next versions of its runs: a HOT
-- update needs room on its own page. Pages written before keep theirs until rewritten. Only a
-- catalog change: no rewrite, a brief lock.
ALTER TABLE operation_runs SET (fillfactor = 70);
