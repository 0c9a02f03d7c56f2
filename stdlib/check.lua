-- check: compare ftl against reference fixtures (HF transformers + PEFT / AdapterHub outputs).
--
-- A fixture directory holds model directories (config.json + model.safetensors +
-- expected.safetensors with input_ids, attention_mask, logits) and adapter directories
-- (adapter_config.json + weights + expected.safetensors whose metadata names the `base`).
local ftl = require("ftl")
local M = {}

-- metadata values are JSON strings in some files and plain strings in others
local function meta_value(v)
  if v == nil then return nil end
  local ok, d = pcall(ftl.json.decode, v)
  if ok and type(d) == "string" then return d end
  return v
end

local function find_base(name, roots)
  for _, r in ipairs(roots) do
    local p = ftl.fs.join(r, name)
    if ftl.fs.exists(ftl.fs.join(p, "config.json")) then return p end
  end
  return nil
end

local function compare(m, e, key)
  local logits = m:forward(e.input_ids, e.attention_mask, {token_type_ids = e.token_type_ids})
  return logits:rel_err(e[key])
end

--- Checks one fixture directory; returns a list of {name=, what=, err=, ok=} rows.
function M.case(path, opts)
  opts = opts or {}
  local tol = opts.tol or 1e-4
  local rows = {}
  local expected = ftl.fs.join(path, "expected.safetensors")
  local e = ftl.tensor.load(expected)
  local meta = ftl.tensor.metadata(expected)
  local function row(what, err)
    rows[#rows + 1] = {name = path, what = what, err = err, ok = err < tol}
  end
  if ftl.fs.exists(ftl.fs.join(path, "adapter_config.json")) then
    local base_name = meta_value(meta.base)
    local base = base_name and find_base(base_name, opts.roots or {})
    if not base then error(path .. ": base model `" .. tostring(base_name) .. "` not found") end
    local head = meta_value(meta.model_class) ~= "BertModel"
    local m = ftl.load(base, {head = head, device = opts.device, dtype = opts.dtype})
    ftl.load_adapter(m, path)
    row("adapter", compare(m, e, "logits"))
    if e.logits_merged then
      m:merge()
      row("merged", compare(m, e, "logits_merged"))
    end
  else
    local m = ftl.load(path, {device = opts.device, dtype = opts.dtype})
    row("model", compare(m, e, "logits"))
  end
  return rows
end

--- Checks every fixture under `dir` (and `opts.extra` directories for bases); prints a table,
--- returns {passed=, failed=, rows=}.
function M.fixtures(dir, opts)
  opts = opts or {}
  local roots = {dir}
  for _, r in ipairs(opts.extra or {}) do roots[#roots + 1] = r end
  local report = {passed = 0, failed = 0, rows = {}}
  for _, name in ipairs(ftl.fs.list(dir)) do
    local path = ftl.fs.join(dir, name)
    local has = function(f) return ftl.fs.exists(ftl.fs.join(path, f)) end
    local fn = nil
    if has("expected.safetensors") and (has("config.json") or has("adapter_config.json")) then
      fn = M.case
    elseif has("expected.safetensors") and has("meta.json") and opts.training then
      fn = M.train_case
    end
    if fn then
      local ok, rows = pcall(fn, path, {tol = opts.tol, roots = roots, device = opts.device, dtype = opts.dtype,
        loss_tol = opts.loss_tol})
      if not ok then
        rows = {{name = path, what = "error", err = math.huge, ok = false, msg = tostring(rows)}}
      end
      for _, r in ipairs(rows) do
        report.rows[#report.rows + 1] = r
        if r.ok then report.passed = report.passed + 1 else report.failed = report.failed + 1 end
        print(string.format("%-4s %-40s %-8s %.2e%s", r.ok and "ok" or "FAIL", name, r.what, r.err,
          r.msg and ("  " .. r.msg) or ""))
      end
    end
  end
  print(string.format("%d passed, %d failed (tolerance %.0e)", report.passed, report.failed, opts.tol or 1e-4))
  return report
end

--- Trains a `train-*` fixture (meta.json, expected.safetensors with init./step3. tensors, and
--- adapter_after_3_steps/ for PEFT cases) for three steps; returns rows as `case` does.
function M.train_case(path, opts)
  opts = opts or {}
  local tol = opts.update_tol or 1e-2
  local meta = ftl.json.read(ftl.fs.join(path, "meta.json"))
  local e = ftl.tensor.load(ftl.fs.join(path, "expected.safetensors"))
  local base = find_base(meta.base, opts.roots or {})
  if not base then error(path .. ": base model `" .. tostring(meta.base) .. "` not found") end
  local m = ftl.load(base, {device = opts.device, dtype = opts.dtype})
  local after = ftl.fs.join(path, "adapter_after_3_steps")
  if ftl.fs.exists(after) then
    ftl.load_adapter(m, after, {trainable = true})
  else
    m:unfreeze()
  end
  local init = {}
  for _, name in ipairs(meta.trainable) do init[name] = e["init." .. name] end
  m:load_state_dict(init)
  local o = meta.optimizer
  local data = ftl.data.tokens{input_ids = e.input_ids, attention_mask = e.attention_mask, labels = e.labels}
  local losses = {}
  ftl.train(m, data, {max_steps = 3, batch_size = #e.input_ids, lr = o.lr, betas = o.betas, eps = o.eps,
    weight_decay = o.weight_decay, shuffle = false, log_every = 1000, on_step = function(s) losses[#losses + 1] = s.loss end})
  local rows = {}
  local want = meta.losses_before_each_step_then_final
  local worst = 0
  for k = 1, 3 do worst = math.max(worst, math.abs(losses[k] - want[k])) end
  rows[#rows + 1] = {name = path, what = "losses", err = worst, ok = worst < (opts.loss_tol or 1e-5)}
  local sd = m:state_dict{trainable = true}
  worst = 0
  for _, name in ipairs(meta.trainable) do
    local upd = sd[name] - e["init." .. name]
    worst = math.max(worst, upd:rel_err(e["step3." .. name] - e["init." .. name]))
  end
  rows[#rows + 1] = {name = path, what = "updates", err = worst, ok = worst < tol}
  return rows
end

return M
