-- Run by scripts/localservers/servers.py in FerretDB's database at every start of the local PostgreSQL (idempotent).
--
-- FerretDB 1.x pushes a filter's top-level equality `{field: value}` down as `_jsonb -> 'field' @> '"value"'`
-- (`_id` included; `$in` too with scripts/ferretdb/postgresql-in-pushdown.patch), which its own btree indexes on
-- `(_jsonb -> 'field')` cannot serve: every query would read the whole table. So each FerretDB index whose leading key
-- is a top-level field gets a GIN twin on that field, which the planner uses for that pushdown (fastupdate off: no
-- pending list for every lookup to read).
CREATE OR REPLACE FUNCTION chatfed_gin_twin(idx oid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  tbl oid;
  tbl_name text;
  field text;
BEGIN
  SELECT i.indrelid, t.relname INTO tbl, tbl_name
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam JOIN pg_class t ON t.oid = i.indrelid
    WHERE i.indexrelid = idx AND a.amname = 'btree';
  field := substring(pg_get_indexdef(idx, 1, false) FROM '^\(*_jsonb -> ''([^'']+)''::text\)*$');
  IF tbl IS NULL OR field IS NULL OR tbl_name LIKE '\_ferretdb\_%' THEN
    RETURN;
  END IF;
  -- one twin per (table, field), named apart from FerretDB's `..._idx` names
  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gin ((_jsonb -> %L) jsonb_path_ops) WITH (fastupdate = off)',
                 left(tbl_name, 40) || '_' || left(md5(field), 8) || '_gin', tbl::regclass, field);
END $$;

CREATE OR REPLACE FUNCTION chatfed_gin_twins() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM chatfed_gin_twin(objid) FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX';
END $$;

DROP EVENT TRIGGER IF EXISTS chatfed_gin_twins;
CREATE EVENT TRIGGER chatfed_gin_twins ON ddl_command_end WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION chatfed_gin_twins();

-- indexes made while the trigger was missing (a cluster from before it)
SELECT count(chatfed_gin_twin(indexrelid)) AS checked FROM pg_index;
