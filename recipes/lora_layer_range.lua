-- lora_layer_range: LoRA only on a range of transformer blocks (default: the top half).
--
--   ftl run recipes/lora_layer_range.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [first=] [last=]
--     [r=16] [steps=60] [lr=1e-3] [batch_size=8] [max_len=256] [seed=1]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- LoRA on PEFT's default targets (q_proj, v_proj for llama) in blocks first..last (0-based,
-- inclusive; PEFT's layers_to_transform). The data (data/instruct.jsonl) is split 80/20; the
-- held-out loss is printed before and after. The adapter goes to OUT/adapter in PEFT's format.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local layers = m:info().layers
local first, last = args.first or layers // 2, args.last or layers - 1
local lora = presets.lora_layers(m, first, last, {r = args.r or 16})
print(string.format("trainable %d of %d parameters (LoRA r=%d on %d modules in layers %d-%d)", m:info().trainable,
  m:info().base_params, args.r or 16, #lora:targets(), first, last))
for _, t in ipairs(lora:targets()) do print("  " .. t) end

-- a short prompt ("Give the plural of the word. knife\n" -> "knives") rather than the Alpaca template,
-- so that small models and short max_len keep the answer
local data = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction", template = "{instruction} {input}\n"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 256,
  lr = args.lr or 1e-3, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s)", before.loss, after.loss, r.steps,
  r.tokens_per_s))
print("saved " .. m:save_adapter("adapter"))
