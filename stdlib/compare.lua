-- compare: full fine-tuning against PEFT methods on one model and one task, every cost and benefit measured.
--
--   local compare = require("compare")
--   local result = compare.run({
--     model = "models/llama",                  -- path, hub id or GGUF file (a fresh copy per method)
--     train = train, eval = eval,              -- task data (eval held out)
--     retention = general_eval,                -- general text: what the model forgets
--     probe = {{prompt = "The capital of France is", answer = "Paris"}, ...},  -- optional
--     methods = {"full", "lora", {"ia3", lr = 1e-2}},   -- default: compare.default_methods
--     steps = 100, batch_size = 8, lr_scale = 1,         -- plus any ftl.train option
--     multitask = {train = train_b, eval = eval_b},       -- optional second task
--   })
--
-- For each method it loads a fresh copy of the base, attaches the method, trains with the same
-- data order (same seed), and measures: trainable parameters (and % of the base model), this
-- training's peak memory (RSS on CPU, device memory on GPU) and optimizer state, time per step and
-- tokens/s, task loss and the task metric (exact-match accuracy of greedy answers to `eval`'s
-- prompts for instruction data, classification accuracy for classification data), retention (the
-- held-out general-text loss before and after, and the share of probe facts the base answered
-- right that it still answers right), storage (the bytes written to keep the result: the adapter,
-- or the trained model) and inference speed (greedy tokens/s with the adapter attached, merged
-- where mergeable, and of the base). The base model is measured too (the `base` row). It writes
-- `comparison.csv`, `comparison.md` (the table, the multi-task section, a recommendation) and
-- `comparison.svg` (loss curves; task metric and retention against trainable share and memory)
-- into the output directory, prints the table and returns {rows=, multitask=, advice=}.
--
-- A method in `methods` is a name of compare.methods, or a table {"name", lr=, steps=, label=,
-- ...} whose other keys are passed to the method's ftl call (r=, alpha=, reduction=, tokens=,
-- layers=), or a new method {name=, label=, lr=, attach = function(m, opts, adapter_name)} (with
-- `kind = "full"` when it trains base weights).
local ftl = require("ftl")
local presets = require("presets")
local report = require("report")
local M = {}

local function merged(a, b)
  local out = {}
  for k, v in pairs(a or {}) do out[k] = v end
  for k, v in pairs(b or {}) do out[k] = v end
  return out
end

-- The methods, each with a learning rate that is a common starting point for it (PEFT methods
-- train few parameters from a neutral start and take larger steps than full fine-tuning);
-- `kind = "full"` methods train base weights, the others attach an adapter. `attach(m, opts,
-- name)` gets the method's options and the adapter name to use.
M.methods = {
  full = {label = "full fine-tuning", lr = 5e-5, kind = "full",
    attach = function(m) presets.full(m) end},
  top = {label = "top 2 layers", lr = 1e-4, kind = "full",
    -- a classifier's new head trains too
    attach = function(m, o) presets.top_layers(m, o.layers or 2, {head = m:info().task ~= "causal_lm"}) end},
  lora = {label = "LoRA r8 q,v", lr = 1e-3, mergeable = true,
    attach = function(m, o, name) ftl.lora(m, merged({r = 8, alpha = 16, name = name}, o)) end},
  lora_all = {label = "LoRA r8 all-linear", lr = 5e-4, mergeable = true,
    attach = function(m, o, name) ftl.lora(m, merged({targets = "all-linear", r = 8, alpha = 16, name = name}, o)) end},
  dora = {label = "DoRA r8 q,v", lr = 1e-3, mergeable = true,
    attach = function(m, o, name) ftl.lora(m, merged({r = 8, alpha = 16, dora = true, name = name}, o)) end},
  ia3 = {label = "IA3", lr = 1e-2, mergeable = true,
    attach = function(m, o, name) ftl.ia3(m, merged({name = name}, o)) end},
  houlsby = {label = "adapter (Houlsby)", lr = 1e-3,
    attach = function(m, o, name) ftl.adapter(m, merged({style = "houlsby", reduction = 16, name = name}, o)) end},
  pfeiffer = {label = "adapter (Pfeiffer)", lr = 1e-3,
    attach = function(m, o, name) ftl.adapter(m, merged({style = "pfeiffer", reduction = 16, name = name}, o)) end},
  prefix = {label = "prefix, 16 tokens", lr = 1e-2,
    attach = function(m, o, name) ftl.prefix(m, merged({tokens = 16, name = name}, o)) end},
  prompt = {label = "prompt, 16 tokens", lr = 3e-2,
    attach = function(m, o, name) ftl.prompt(m, merged({tokens = 16, name = name}, o)) end},
}
M.default_methods = {"full", "top", "lora", "lora_all", "dora", "ia3", "houlsby", "pfeiffer", "prefix", "prompt"}

M.columns = {"method", "trainable", "trainable_pct", "peak_memory_bytes", "optimizer_memory_bytes",
  "time_per_step_s", "tokens_per_s", "task_loss", "accuracy", "retention_loss", "retention_change",
  "probe_accuracy", "storage_bytes", "inference_tokens_per_s"}

-- The spec's own keys; any other key is an ftl.train option, passed to every training.
local SPEC = {model = true, load = true, train = true, eval = true, retention = true, probe = true,
  methods = true, steps = true, multitask = true, max_tokens = true, stop = true,
  eval_limit = true, inference = true, margin = true, quiet = true, lr_scale = true, name = true}
local METHOD_KEYS = {lr = true, steps = true, label = true, name = true, attach = true, kind = true,
  mergeable = true}

local function closest(key, keys)
  local best, bd
  for k in pairs(keys) do
    -- edit distance, for "did you mean"
    local a, b = key, k
    local prev = {}
    for j = 0, #b do prev[j] = j end
    for i = 1, #a do
      local cur = {[0] = i}
      for j = 1, #b do
        cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:sub(i, i) == b:sub(j, j) and 0 or 1))
      end
      prev = cur
    end
    if prev[#b] <= 2 and (bd == nil or prev[#b] < bd) then best, bd = k, prev[#b] end
  end
  return best
end

local function resolve_method(entry)
  if type(entry) == "string" then entry = {entry} end
  if type(entry) ~= "table" then error("compare: a method is a name or a table, got " .. type(entry), 3) end
  local key = entry[1] or entry.name
  local base = key and M.methods[key]
  if not base and not entry.attach then
    local names = {}
    for k in pairs(M.methods) do names[#names + 1] = k end
    table.sort(names)
    local hint = key and closest(key, M.methods)
    error(string.format("compare: unknown method `%s`%s (methods: %s)", tostring(key),
      hint and ("; did you mean `" .. hint .. "`?") or "", table.concat(names, ", ")), 3)
  end
  base = base or {}
  local opts = {}
  for k, v in pairs(entry) do
    if type(k) == "string" and not METHOD_KEYS[k] then opts[k] = v end
  end
  return {
    key = key or entry.label,
    label = entry.label or base.label or key,
    lr = entry.lr or base.lr,
    steps = entry.steps,
    kind = entry.kind or base.kind or "adapter",
    mergeable = entry.mergeable or base.mergeable or false,
    attach = entry.attach or base.attach,
    opts = opts,
  }
end

-- The task metric of a model on `eval`: classification accuracy from ftl.evaluate, or the share of
-- held-out prompts answered exactly (greedy; whitespace at the ends ignored).
local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function score(m, spec, rows, classify)
  local e = ftl.evaluate(m, spec.eval)
  if classify then return e.loss, e.accuracy end
  if not rows or #rows == 0 then return e.loss, nil end
  local right = 0
  for _, r in ipairs(rows) do
    local answer = m:generate(r.prompt, {max_tokens = spec.max_tokens or 24, stop = spec.stop})
    if trim(answer) == trim(r.output) then right = right + 1 end
  end
  return e.loss, right / #rows
end

-- Probe facts: which of `facts` the model completes with the answer (the answer's words begin the
-- greedy continuation, case ignored).
local function probe(m, facts)
  local ok = {}
  for i, f in ipairs(facts or {}) do
    local got = m:generate(f.prompt, {max_tokens = f.max_tokens or 8})
    ok[i] = trim(got):lower():sub(1, #trim(f.answer)) == trim(f.answer):lower()
  end
  return ok
end

-- Greedy generation speed: tokens/s over `inference.runs` generations of exactly
-- `inference.tokens` tokens from the prompt (one warm-up first). Classifiers: tokens/s through forward passes.
local function inference_speed(m, spec, prompt_text, classify)
  local inf = spec.inference or {}
  local runs = inf.runs or 3
  if classify then
    local texts = {}
    for i, r in ipairs(spec.eval:rows()) do
      if i > 16 then break end
      texts[#texts + 1] = r.text
    end
    local ids, n = {}, 0
    local width = 0
    for i, t in ipairs(texts) do
      ids[i] = m.tokenizer:encode(t)
      width = math.max(width, #ids[i])
    end
    local mask = {}
    for i, row in ipairs(ids) do
      mask[i] = {}
      n = n + #row
      for j = 1, width do
        mask[i][j] = j <= #row and 1 or 0
        if j > #row then row[j] = m.tokenizer:pad() or 0 end
      end
    end
    m:forward(ids, mask)
    local t0 = ftl.clock()
    for _ = 1, runs do m:forward(ids, mask) end
    return n * runs / math.max(ftl.clock() - t0, 1e-9)
  end
  local tokens = inf.tokens or 32
  m:generate(prompt_text, {max_tokens = 4})
  local t0, n = ftl.clock(), 0
  for _ = 1, runs do
    -- every model generates the same number of tokens: one that answers and stops at once would
    -- otherwise be timed on its prompt
    local _, k = m:generate(prompt_text, {max_tokens = tokens, min_tokens = tokens})
    n = n + k
  end
  return n / math.max(ftl.clock() - t0, 1e-9)
end

local function train_opts(spec, method, steps, on_step)
  local o = {}
  for k, v in pairs(spec) do
    if type(k) == "string" and not SPEC[k] then o[k] = v end
  end
  o.max_steps = steps
  o.lr = method.lr * (spec.lr_scale or 1)
  o.seed = o.seed or 1
  o.log_every = o.log_every or 1000000
  o.on_step = on_step
  return o
end

local function mib(b) return b and string.format("%.1f", b / 2 ^ 20) or "" end

-- Saves what must be kept for the task and returns its size in bytes: the adapter's files, the
-- full model for full fine-tuning, the trained tensors for a method that trains some base layers.
local function store(m, method, dir, adapter)
  if method.kind == "full" then
    if method.key == "full" then
      return ftl.fs.size(m:save(dir))
    end
    return ftl.fs.size(ftl.tensor.save(dir .. ".safetensors", m:state_dict({trainable = true})))
  end
  return ftl.fs.size(m:save_adapter(dir, {name = adapter}))
end

local function check_spec(spec)
  if type(spec) ~= "table" then error("compare.run: expected a spec table, got " .. type(spec), 3) end
  for _, k in ipairs({"model", "train", "eval"}) do
    if spec[k] == nil then error("compare.run: the spec needs `" .. k .. "`", 3) end
  end
  if spec.multitask then
    for _, k in ipairs({"train", "eval"}) do
      if spec.multitask[k] == nil then error("compare.run: multitask needs `" .. k .. "`", 3) end
    end
  end
end

--- Runs the comparison (see the top of this file); returns {rows=, multitask=, advice=, files=}.
function M.run(spec)
  check_spec(spec)
  local log = spec.quiet and function() end or print
  local methods = {}
  for i, e in ipairs(spec.methods or M.default_methods) do methods[i] = resolve_method(e) end
  local steps = spec.steps or 100
  local eval_rows, classify
  do
    local probe_m = ftl.load(spec.model, spec.load)
    classify = probe_m:info().task ~= "causal_lm"
    probe_m = nil
  end
  if not classify then
    local ok, rows = pcall(function() return spec.eval:rows() end)
    if ok and rows[1] and rows[1].prompt then
      eval_rows = {}
      for i, r in ipairs(rows) do
        if spec.eval_limit and i > spec.eval_limit then break end
        eval_rows[#eval_rows + 1] = r
      end
    end
  end
  local prompt_text = (spec.inference and spec.inference.prompt)
    or (eval_rows and eval_rows[1] and eval_rows[1].prompt) or "The"

  -- the base, before any tuning
  local base = ftl.load(spec.model, spec.load)
  local base_params = base:info().params
  local base_loss, base_acc = score(base, spec, eval_rows, classify)
  local base_ret = spec.retention and ftl.evaluate(base, spec.retention).loss
  local known = {}
  if spec.probe and not classify then
    for i, ok in ipairs(probe(base, spec.probe)) do
      if ok then known[#known + 1] = spec.probe[i] end
    end
  end
  local base_inf = inference_speed(base, spec, prompt_text, classify)
  local base_b_loss, base_b_acc
  if spec.multitask then
    base_b_loss, base_b_acc = score(base, spec.multitask, nil, classify)
  end
  base = nil
  log(string.format("compare: %s, %d parameters; %d methods, %d steps each%s", tostring(spec.model), base_params,
    #methods, steps, spec.probe and string.format("; the base knows %d of %d probe facts", #known, #spec.probe) or ""))

  local rows = {{method = "base", key = "base", trainable = 0, trainable_pct = 0, task_loss = base_loss,
    accuracy = base_acc, retention_loss = base_ret, retention_change = base_ret and 0,
    probe_accuracy = (#known > 0) and 1 or nil, inference_tokens_per_s = base_inf}}
  local curves, multi = {}, {}
  local mt = spec.multitask
  local mt_rows
  if mt then
    local ok, r = pcall(function() return mt.eval:rows() end)
    if ok and r[1] and r[1].prompt then mt_rows = r end
    mt = merged(mt, {max_tokens = mt.max_tokens or spec.max_tokens, stop = mt.stop or spec.stop})
  end

  for _, method in ipairs(methods) do
    local m = ftl.load(spec.model, spec.load)
    local adapter = nil
    if method.kind ~= "full" then adapter = "task" end
    method.attach(m, method.opts, adapter)
    if adapter then m:set_adapter(adapter) end
    local curve = {x = {}, y = {}}
    local r = ftl.train(m, spec.train, train_opts(spec, method, method.steps or steps, function(s)
      curve.x[#curve.x + 1] = s.step
      curve.y[#curve.y + 1] = s.loss
    end))
    curves[#curves + 1] = {name = method.label, x = curve.x, y = curve.y}
    local loss, acc = score(m, spec, eval_rows, classify)
    local ret = spec.retention and ftl.evaluate(m, spec.retention).loss
    local still
    if #known > 0 then
      local right = 0
      for _, ok in ipairs(probe(m, known)) do if ok then right = right + 1 end end
      still = right / #known
    end
    local storage = store(m, method, "comparison/" .. method.key, adapter)
    local inf = inference_speed(m, spec, prompt_text, classify)
    local row = {method = method.label, key = method.key, trainable = r.trainable,
      trainable_pct = 100 * r.trainable / base_params, peak_memory_bytes = r.peak_mem_bytes,
      optimizer_memory_bytes = r.optimizer_bytes, time_per_step_s = r.time_s / math.max(r.steps, 1),
      tokens_per_s = r.tokens_per_s, task_loss = loss, accuracy = acc, retention_loss = ret,
      retention_change = ret and base_ret and (ret - base_ret), probe_accuracy = still, storage_bytes = storage,
      inference_tokens_per_s = inf, kind = method.kind, steps = r.steps, final_loss = r.loss}

    -- a second task on the same base
    if mt then
      local mrow = {method = method.label, key = method.key}
      local mo = train_opts(spec, method, mt.steps or method.steps or steps, nil)
      if method.kind == "full" then
        -- trained on, sequentially: the one model forgets the first task
        ftl.train(m, mt.train, mo)
        mrow.a_loss, mrow.a_acc = score(m, spec, eval_rows, classify)
        mrow.b_loss, mrow.b_acc = score(m, mt, mt_rows, classify)
        mrow.how = "sequential: one model, trained on task A then B"
        mrow.storage_bytes = storage
        multi[#multi + 1] = mrow
        if method.key == "full" then
          -- or two copies: a fresh model for task B
          local m2 = ftl.load(spec.model, spec.load)
          method.attach(m2, method.opts)
          ftl.train(m2, mt.train, mo)
          local c = {method = method.label .. " (two copies)", key = method.key .. "_copies",
            how = "two models, one per task"}
          c.a_loss, c.a_acc = loss, acc
          c.b_loss, c.b_acc = score(m2, mt, mt_rows, classify)
          c.storage_bytes = storage + store(m2, method, "comparison/" .. method.key .. "_task_b")
          multi[#multi + 1] = c
          m2 = nil
        end
      else
        method.attach(m, method.opts, "task_b")
        m:set_adapter("task_b")
        ftl.train(m, mt.train, mo)
        mrow.b_loss, mrow.b_acc = score(m, mt, mt_rows, classify)
        m:set_adapter("task")
        mrow.a_loss, mrow.a_acc = score(m, spec, eval_rows, classify)
        mrow.how = "one base, an adapter per task, switched with set_adapter"
        mrow.storage_bytes = storage + store(m, method, "comparison/" .. method.key .. "_task_b", "task_b")
        m:delete_adapter("task_b")
        multi[#multi + 1] = mrow
      end
    end

    if method.mergeable then
      m:set_adapter(adapter)
      m:merge()
      row.merged_inference_tokens_per_s = inference_speed(m, spec, prompt_text, classify)
    end
    rows[#rows + 1] = row
    log(string.format("  %-22s %6.1fs  loss %.3f  %s", method.label, r.time_s, loss,
      acc and string.format("accuracy %3.0f%%", 100 * acc) or ""))
    m = nil
  end

  local advice = M.advice(rows, multi, {margin = spec.margin, train_size = spec.train:len(), steps = steps, classify = classify,
    probe = #known > 0, base_params = base_params})
  local files = M.write(rows, multi, advice, curves, {model = spec.model, steps = steps, base_params = base_params,
    known = #known, probe = spec.probe and #spec.probe, b_base = {loss = base_b_loss, acc = base_b_acc},
    classify = classify, quiet = spec.quiet})
  return {rows = rows, multitask = multi, advice = advice, files = files}
end

local function fmt_row(r)
  local function f(v, p) return v and string.format(p, v) or "" end
  return {
    method = r.method, trainable = r.trainable and tostring(r.trainable) or "",
    trainable_pct = f(r.trainable_pct, "%.3f"), peak_memory_bytes = r.peak_memory_bytes and tostring(r.peak_memory_bytes) or "",
    optimizer_memory_bytes = r.optimizer_memory_bytes and tostring(r.optimizer_memory_bytes) or "",
    time_per_step_s = f(r.time_per_step_s, "%.4f"), tokens_per_s = f(r.tokens_per_s, "%.1f"),
    task_loss = f(r.task_loss, "%.4f"), accuracy = f(r.accuracy, "%.4f"), retention_loss = f(r.retention_loss, "%.4f"),
    retention_change = f(r.retention_change, "%+.4f"), probe_accuracy = f(r.probe_accuracy, "%.4f"),
    storage_bytes = r.storage_bytes and tostring(r.storage_bytes) or "",
    inference_tokens_per_s = f(r.inference_tokens_per_s, "%.1f"),
    merged_inference_tokens_per_s = f(r.merged_inference_tokens_per_s, "%.1f"),
  }
end

local function pct(v) return v and string.format("%.0f%%", 100 * v) or "" end
local function human(b)
  if not b then return "" end
  local u, i = {"B", "KiB", "MiB", "GiB"}, 1
  while b >= 1024 and i < #u do b, i = b / 1024, i + 1 end
  return string.format(i == 1 and "%d %s" or "%.1f %s", b, u[i])
end

--- The recommendation: rules over the measured rows, in the terms of the usual advice.
function M.advice(rows, multi, o)
  local margin = o.margin or 0.02
  local out = {}
  local full, methods = nil, {}
  for _, r in ipairs(rows) do
    if r.key == "full" then full = r end
    if r.key ~= "base" then methods[#methods + 1] = r end
  end
  if #methods == 0 then return out end
  local metric = function(r) return r.accuracy or -r.task_loss end
  local metric_name = rows[2].accuracy and "accuracy" or "task loss"
  local function show(r)
    return r.accuracy and pct(r.accuracy) or string.format("%.3f", r.task_loss)
  end
  local best = methods[1]
  for _, r in ipairs(methods) do if metric(r) > metric(best) then best = r end end
  out[#out + 1] = string.format("Best %s: %s (%s).", metric_name, best.method, show(best))
  -- the cheapest (fewest trainable parameters) within the margin of full fine-tuning
  local ref = full or best
  local tol = rows[2].accuracy and margin or math.abs(ref.task_loss) * margin * 2.5
  local cheap
  for _, r in ipairs(methods) do
    if r.kind ~= "full" and metric(r) >= metric(ref) - tol and (cheap == nil or r.trainable < cheap.trainable) then
      cheap = r
    end
  end
  if cheap then
    out[#out + 1] = string.format("Tight memory or compute budget: %s comes within %s of %s (%s against %s) "
      .. "training %.3f%% of the parameters, at a peak of %s against %s and %s per step against %s; it "
      .. "stores %s per task against %s.", cheap.method,
      rows[2].accuracy and string.format("%.0f points", 100 * margin) or string.format("%.0f%%", 250 * margin),
      ref.method, show(cheap), show(ref), cheap.trainable_pct, human(cheap.peak_memory_bytes),
      human(ref.peak_memory_bytes), string.format("%.3fs", cheap.time_per_step_s),
      string.format("%.3fs", ref.time_per_step_s), human(cheap.storage_bytes), human(ref.storage_bytes))
  elseif full then
    local closest
    for _, r in ipairs(methods) do
      if r.kind ~= "full" and (closest == nil or metric(r) > metric(closest)) then closest = r end
    end
    if closest then
      out[#out + 1] = string.format("No PEFT method came within %s of full fine-tuning (%s) here; the closest "
        .. "was %s (%s). With the memory for it and %d training examples, full fine-tuning buys task quality.",
        rows[2].accuracy and string.format("%.0f points", 100 * margin) or "the margin", show(full), closest.method,
        show(closest), o.train_size or 0)
    end
  end
  -- what the model keeps
  local keeps
  for _, r in ipairs(methods) do
    if r.retention_change and (keeps == nil or r.retention_change < keeps.retention_change) then keeps = r end
  end
  if keeps then
    local s = string.format("Keeping what the model knew: %s forgot least (general-text loss %+.3f", keeps.method,
      keeps.retention_change)
    if keeps.probe_accuracy then s = s .. string.format(", %s of the probe facts kept", pct(keeps.probe_accuracy)) end
    s = s .. ")"
    if full and full.retention_change and keeps ~= full then
      s = s .. string.format("; full fine-tuning %+.3f", full.retention_change)
      if full.probe_accuracy then s = s .. string.format(" (%s of the facts kept)", pct(full.probe_accuracy)) end
    end
    local worse = {}
    for _, r in ipairs(methods) do
      if full and r.kind ~= "full" and r.retention_change and full.retention_change
        and r.retention_change > full.retention_change + 0.01 then
        worse[#worse + 1] = r.method
      end
    end
    if #worse > 0 then
      s = s .. ". Against the usual advice, " .. table.concat(worse, ", ") .. " forgot more than full fine-tuning here"
    end
    out[#out + 1] = s .. "."
  end
  -- speed
  local fast
  for _, r in ipairs(methods) do
    if r.time_per_step_s and (fast == nil or r.time_per_step_s < fast.time_per_step_s) then fast = r end
  end
  if fast then
    out[#out + 1] = string.format("Fastest to train: %s (%.3fs per step%s).", fast.method, fast.time_per_step_s,
      full and fast ~= full and string.format(", full fine-tuning %.3fs", full.time_per_step_s) or "")
  end
  -- several tasks
  if #multi > 0 then
    local best_mt, seq
    for _, r in ipairs(multi) do
      local both = (r.a_acc and r.b_acc) and (r.a_acc + r.b_acc) / 2 or -((r.a_loss + r.b_loss) / 2)
      r.both = both
      if r.how:find("adapter") and (best_mt == nil or both > best_mt.both) then best_mt = r end
      if r.key == "full" then seq = r end
    end
    if best_mt then
      local s = string.format("Several tasks on one base: %s keeps both (task A %s, task B %s after switching), "
        .. "%s for the two tasks", best_mt.method, best_mt.a_acc and pct(best_mt.a_acc) or string.format("%.3f", best_mt.a_loss),
        best_mt.b_acc and pct(best_mt.b_acc) or string.format("%.3f", best_mt.b_loss), human(best_mt.storage_bytes))
      if seq then
        s = s .. string.format("; full fine-tuning trained on B after A keeps task A at %s (it was %s)",
          seq.a_acc and pct(seq.a_acc) or string.format("%.3f", seq.a_loss), full and show(full) or "?")
      end
      out[#out + 1] = s .. "."
    end
  end
  if o.train_size then
    out[#out + 1] = string.format("Amount of data: measured on %d training examples%s; the ranking can change with "
      .. "the data size (more data tends to favour the methods that train more parameters), so rerun with yours.",
      o.train_size, o.steps and string.format(" for %d steps", o.steps) or "")
  end
  return out
end

--- Writes comparison.csv, .md and .svg under the output directory; returns their paths.
function M.write(rows, multi, advice, curves, o)
  local cols = {}
  for i, c in ipairs(M.columns) do cols[i] = c end
  cols[#cols + 1] = "merged_inference_tokens_per_s"
  local formatted = {}
  for i, r in ipairs(rows) do formatted[i] = fmt_row(r) end
  local csv = report.csv("comparison.csv", formatted, cols)

  local shown = {}
  for i, r in ipairs(rows) do
    shown[i] = {
      method = r.method, trainable = r.trainable, share = string.format("%.3f%%", r.trainable_pct or 0),
      peak = mib(r.peak_memory_bytes), opt = mib(r.optimizer_memory_bytes),
      step = r.time_per_step_s and string.format("%.3f", r.time_per_step_s) or "",
      tps = r.tokens_per_s and string.format("%.0f", r.tokens_per_s) or "",
      loss = r.task_loss and string.format("%.3f", r.task_loss) or "", acc = pct(r.accuracy),
      ret = r.retention_loss and string.format("%.3f", r.retention_loss) or "",
      forgot = r.retention_change and string.format("%+.3f", r.retention_change) or "",
      probe = pct(r.probe_accuracy), store = human(r.storage_bytes),
      inf = r.inference_tokens_per_s and string.format("%.0f", r.inference_tokens_per_s) or "",
      merged = r.merged_inference_tokens_per_s and string.format("%.0f", r.merged_inference_tokens_per_s) or "",
    }
  end
  local columns = {{"method"}, {"trainable"}, {"share", nil, title = "% params"}, {"peak", nil, title = "peak MiB"},
    {"opt", nil, title = "opt MiB"}, {"step", nil, title = "s/step"}, {"tps", nil, title = "tok/s"},
    {"loss", nil, title = "task loss"}, {"acc", nil, title = o.classify and "accuracy" or "exact"},
    {"ret", nil, title = "general loss"}, {"forgot", nil, title = "forgot"}, {"probe", nil, title = "facts kept"},
    {"store", nil, title = "stored"}, {"inf", nil, title = "gen tok/s"}, {"merged", nil, title = "merged tok/s"}}
  local table_text = report.table(shown, columns, {quiet = o.quiet})
  local md = {"# Full fine-tuning against PEFT: " .. tostring(o.model), "",
    string.format("%d steps per method; base model %d parameters. `peak`: this training's peak memory; `forgot`: "
      .. "held-out general-text loss after minus before; `facts kept`: share of the %s probe facts the base "
      .. "answered right that the tuned model still does; `stored`: bytes kept per task; `gen tok/s`: greedy "
      .. "generation with the adapter attached (merged: folded in).", o.steps, o.base_params,
      o.probe and string.format("%d (%d known)", o.probe, o.known) or "no"), "", table_text, ""}
  if #multi > 0 then
    local mrows = {}
    for i, r in ipairs(multi) do
      mrows[i] = {method = r.method, how = r.how,
        a = r.a_acc and pct(r.a_acc) or string.format("%.3f", r.a_loss),
        b = r.b_acc and pct(r.b_acc) or string.format("%.3f", r.b_loss), store = human(r.storage_bytes)}
    end
    md[#md + 1] = "## Two tasks on one base"
    md[#md + 1] = ""
    md[#md + 1] = string.format("Task A is the task above, task B the second one (the base: %s). Each PEFT method "
      .. "keeps one adapter per task on one loaded model and switches with `set_adapter`, both measured after "
      .. "switching; full fine-tuning either trains the one model on B after A, or keeps two copies.",
      o.b_base.acc and pct(o.b_base.acc) or string.format("loss %.3f", o.b_base.loss or 0))
    md[#md + 1] = ""
    md[#md + 1] = report.table(mrows, {{"method"}, {"how"}, {"a", nil, title = "task A"}, {"b", nil, title = "task B"},
      {"store", nil, title = "stored for both"}}, {quiet = o.quiet})
    md[#md + 1] = ""
  end
  md[#md + 1] = "## Recommendation"
  md[#md + 1] = ""
  for _, a in ipairs(advice) do md[#md + 1] = "- " .. a end
  local md_path = report.write("comparison.md", table.concat(md, "\n") .. "\n")
  if not o.quiet then
    print("")
    for _, a in ipairs(advice) do print("- " .. a) end
  end

  local acc_pts, ret_pts, mem_pts = {}, {}, {}
  for _, r in ipairs(rows) do
    if r.key ~= "base" then
      local y = r.accuracy or r.task_loss
      acc_pts[#acc_pts + 1] = {name = r.method, x = {r.trainable_pct}, y = {y}}
      if r.retention_change then ret_pts[#ret_pts + 1] = {name = r.method, x = {r.trainable_pct}, y = {r.retention_change}} end
      mem_pts[#mem_pts + 1] = {name = r.method, x = {r.peak_memory_bytes / 2 ^ 20}, y = {y}}
    end
  end
  local metric = rows[2] and rows[2].accuracy and (o.classify and "accuracy" or "exact-match accuracy") or "task loss"
  local panels = {
    {title = "training loss", x = "step", y = "loss", series = curves},
    {title = metric .. " against trainable share", x = "trainable % (log)", y = metric, kind = "points", log_x = true,
      series = acc_pts},
    {title = metric .. " against peak memory", x = "peak MiB", y = metric, kind = "points", series = mem_pts},
  }
  if #ret_pts > 0 then
    panels[#panels + 1] = {title = "forgetting against trainable share", x = "trainable % (log)",
      y = "general-text loss change", kind = "points", log_x = true, series = ret_pts}
  end
  local svg = ftl.plot("comparison.svg", {title = "full fine-tuning against PEFT", panels = panels})
  return {csv = csv, md = md_path, svg = svg}
end

return M
