-- presets: one call per fine-tuning method (LoRA, DoRA, IA3, bottleneck adapters, prefix, prompt, full, top layers).
--
--   local presets = require("presets")
--   presets.lora_attention(m, {r = 16})     -- LoRA on every attention projection
--   presets.lora_all(m, {r = 8})            -- LoRA on every linear layer but the output head
--   presets.top_layers(m, 4)                -- train the top 4 transformer blocks in full
--
-- Each preset takes the model and an optional table of options that override its defaults and
-- are passed on to the ftl call underneath (so any option of ftl.lora, ftl.ia3, ... works), and
-- returns what that call returns (the adapter handle). The defaults are common starting points
-- (LoRA alpha = 2·r), not tuned values.
local ftl = require("ftl")
local M = {}

local function merged(defaults, opts)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for k, v in pairs(opts or {}) do out[k] = v end
  return out
end

-- The attention projections of each architecture, by HF module name (PEFT's list rule: a name
-- matches a path ending in "." .. name).
M.attention = {
  llama = {"q_proj", "k_proj", "v_proj", "o_proj"},
  mistral = {"q_proj", "k_proj", "v_proj", "o_proj"},
  qwen2 = {"q_proj", "k_proj", "v_proj", "o_proj"},
  gpt2 = {"c_attn", "attn.c_proj"},
  bert = {"query", "key", "value", "attention.output.dense"},
}

local function attention_targets(m)
  local arch = m:info().arch
  local t = M.attention[arch]
  if not t then error("presets: no attention projections known for model type `" .. arch .. "`; pass targets=") end
  return t
end

--- LoRA on the attention projections (q, k, v, o); opts as ftl.lora (default r = 8, alpha = 2r).
function M.lora_attention(m, opts)
  opts = opts or {}
  local r = opts.r or 8
  return ftl.lora(m, merged({targets = attention_targets(m), r = r, alpha = 2 * r}, opts))
end

--- LoRA on every linear layer but the output head (PEFT's "all-linear").
function M.lora_all(m, opts)
  opts = opts or {}
  local r = opts.r or 8
  return ftl.lora(m, merged({targets = "all-linear", r = r, alpha = 2 * r}, opts))
end

--- LoRA on PEFT's default targets for the architecture (q, v for llama) in blocks first..last
--- only (0-based, inclusive).
function M.lora_layers(m, first, last, opts)
  local n = m:info().layers
  if first < 0 or last >= n or first > last then
    error(string.format("presets.lora_layers: layers %d..%d, the model has %d (0..%d)", first, last, n, n - 1))
  end
  opts = opts or {}
  local r = opts.r or 8
  return ftl.lora(m, merged({r = r, alpha = 2 * r, layers = string.format("%d-%d", first, last)}, opts))
end

--- DoRA (weight-decomposed LoRA) on the attention projections.
function M.dora(m, opts)
  return M.lora_attention(m, merged({dora = true}, opts))
end

--- IA3 with PEFT's default targets for the architecture.
function M.ia3(m, opts)
  return ftl.ia3(m, opts or {})
end

--- A Houlsby bottleneck adapter (after attention and after the feed-forward block).
function M.houlsby(m, opts)
  opts = opts or {}
  local d = {style = "houlsby"}
  if opts.size == nil then d.reduction = 16 end
  return ftl.adapter(m, merged(d, opts))
end

--- A Pfeiffer bottleneck adapter (after the feed-forward block only).
function M.pfeiffer(m, opts)
  opts = opts or {}
  local d = {style = "pfeiffer"}
  if opts.size == nil then d.reduction = 16 end
  return ftl.adapter(m, merged(d, opts))
end

--- Prefix tuning: learned keys and values in front of every layer's attention.
function M.prefix(m, opts)
  return ftl.prefix(m, merged({tokens = 16}, opts))
end

--- Prompt tuning: learned virtual tokens in front of the input embeddings.
function M.prompt(m, opts)
  return ftl.prompt(m, merged({tokens = 16}, opts))
end

--- Full fine-tuning: every base weight trainable.
function M.full(m)
  m:unfreeze()
  return m
end

--- The module path that holds the numbered transformer blocks ("model.layers", "transformer.h",
--- "bert.encoder.layer"): the prefix with exactly as many numbered children as the model has layers.
function M.layer_prefix(m)
  local n = m:info().layers
  local seen = {}
  for _, p in ipairs(m:modules()) do
    local prefix, i = p:match("^(.-)%.(%d+)$")
    if prefix then
      seen[prefix] = seen[prefix] or {}
      seen[prefix][tonumber(i)] = true
    end
  end
  local best
  for prefix, idx in pairs(seen) do
    local count = 0
    for _ in pairs(idx) do count = count + 1 end
    if count == n and idx[0] and idx[n - 1] and (best == nil or #prefix < #best) then best = prefix end
  end
  if not best then error("presets: cannot find the model's layer list among its modules") end
  return best
end

--- The glob that selects whole transformer blocks first..last (0-based, inclusive).
function M.layers_pattern(m, first, last)
  if first == last then return string.format("%s.%d.**", M.layer_prefix(m), first) end
  return string.format("%s.{%d..%d}.**", M.layer_prefix(m), first, last)
end

--- Freezes everything, then unfreezes the top `n` transformer blocks (and with
--- `{head = true}` the final norm and output head too); returns the trainable parameter count.
function M.top_layers(m, n, opts)
  opts = opts or {}
  local layers = m:info().layers
  if n < 1 or n > layers then
    error(string.format("presets.top_layers: n = %d, the model has %d layers", n, layers))
  end
  m:freeze()
  m:unfreeze(M.layers_pattern(m, layers - n, layers - 1))
  if opts.head then
    for _, p in ipairs(m:parameters()) do
      if not p.name:find(M.layer_prefix(m) .. ".", 1, true) and not p.name:find("embed", 1, true)
        and not p.name:find("wte", 1, true) and not p.name:find("wpe", 1, true) then
        m:unfreeze({p.name})
      end
    end
  end
  return m:info().trainable
end

return M
