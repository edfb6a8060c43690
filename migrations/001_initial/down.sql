-- Drops the table, its indexes (tasks_pkey, idx_tasks_user_id, idx_tasks_created_at)
-- and the sequence behind its SERIAL id.
DROP INDEX idx_tasks_created_at;
DROP INDEX idx_tasks_user_id;
DROP TABLE tasks;
