-- schedule: step counts for N epochs, warm-up as a fraction of the steps, a gradual-unfreezing on_step builder.
--
--   local schedule = require("schedule")
--   local steps = schedule.steps(train, {epochs = 3, batch_size = 8})
--   ftl.train(m, train, {max_steps = steps, warmup = schedule.warmup(steps, 0.1), ...,
--     on_step = schedule.gradual_unfreeze(m, {every = 20})})
local M = {}

--- Optimizer steps that `epochs` passes over `data` take with `batch_size` and `grad_accum`
--- (the last, partial batch counts, as in ftl.train and transformers' Trainer).
function M.steps(data, opts)
  opts = opts or {}
  local n = type(data) == "number" and data or data:len()
  local bs, accum, epochs = opts.batch_size or 8, opts.grad_accum or 1, opts.epochs or 1
  local batches = math.ceil(n / bs)
  return math.max(1, math.ceil(batches / accum)) * epochs
end

--- Warm-up steps as a fraction of `steps` (transformers' warmup_ratio: rounded up).
function M.warmup(steps, fraction)
  return math.ceil(steps * (fraction or 0.1))
end

--- An on_step callback that unfreezes one more transformer block, from the top down, every
--- `every` steps (ULMFiT's gradual unfreezing). Blocks are unfrozen in full. Call it after
--- setting up what trains first (e.g. presets.top_layers(m, 1)). Options: `every` (steps, default
--- 10), `from` (the first block to unfreeze next; default: the one below the lowest trainable
--- block), `down_to` (the lowest block to unfreeze, default 0), `on_unfreeze(layer, step)`
--- (called after each), `after` (another on_step callback to call, whose result is returned).
function M.gradual_unfreeze(m, opts)
  opts = opts or {}
  local presets = require("presets")
  local every = opts.every or 10
  local prefix = presets.layer_prefix(m)
  local nl = m:info().layers
  local next_layer = opts.from
  if next_layer == nil then
    next_layer = nl - 1
    for _, p in ipairs(m:parameters()) do
      local i = p.trainable and p.name:sub(1, #prefix + 1) == prefix .. "." and p.name:match("^%.(%d+)%.", #prefix + 1)
      if i then next_layer = math.min(next_layer, tonumber(i) - 1) end
    end
  end
  local down_to = opts.down_to or 0
  return function(s)
    if s.step > 0 and s.step % every == 0 and next_layer >= down_to then
      m:unfreeze(string.format("%s.%d.**", prefix, next_layer))
      if opts.on_unfreeze then opts.on_unfreeze(next_layer, s.step) end
      next_layer = next_layer - 1
    end
    if opts.after then return opts.after(s) end
  end
end

return M
