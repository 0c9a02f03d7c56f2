-- top_layers: freeze all but the top N transformer blocks and train those in full.
--
--   ftl run recipes/top_layers.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [n=4] [head=false]
--     [steps=60] [lr=1e-4] [batch_size=8] [max_len=256] [seed=1] [save=true]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- A cheap middle ground between PEFT and full fine-tuning: the lower blocks (general features)
-- stay frozen, so no gradients flow below the lowest trained block. head=true also trains the
-- final norm and the output head. The data (data/instruct.jsonl) is split 80/20; the held-out
-- loss is printed before and after. The model is written to OUT/model (save=false skips it).
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local layers = m:info().layers
local n = math.min(args.n or 4, layers)
presets.top_layers(m, n, {head = args.head})
print(string.format("trainable %d of %d parameters (top %d of %d layers: %s)", m:info().trainable,
  m:info().base_params, n, layers, presets.layers_pattern(m, layers - n, layers - 1)))

-- a short prompt ("Give the plural of the word. knife\n" -> "knives") rather than the Alpaca template,
-- so that small models and short max_len keep the answer
local data = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction", template = "{instruction} {input}\n"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 256,
  lr = args.lr or 1e-4, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s)", before.loss, after.loss, r.steps,
  r.tokens_per_s))
if args.save ~= false then print("saved " .. m:save("model")) end
