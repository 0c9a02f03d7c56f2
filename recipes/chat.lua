-- chat: fine-tune a chat model on conversations rendered with its tokenizer's chat template.
--
--   ftl run recipes/chat.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [steps=60] [lr=1e-3] [r=16]
--     [batch_size=4] [max_len=512] [seed=1]
--
-- `model=` is an HF model directory (its chat_template.jinja or tokenizer_config.json's
-- chat_template is used), a .gguf file or a hub id in the local Hugging Face cache. Each line of
-- data/chat.jsonl is {"messages": [{"role": ..., "content": ...}, ...]} (system, user and
-- assistant turns); the loss is on the assistant turns only, as TRL's assistant-only loss. LoRA
-- on the attention projections; the held-out loss is printed before and after, and the adapter
-- is written in PEFT's format to OUT/adapter.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local lora = presets.lora_attention(m, {r = args.r or 16})
print(string.format("trainable %d of %d parameters (LoRA r=%d on %d modules)", m:info().trainable,
  m:info().base_params, args.r or 16, #lora:targets()))

local data = ftl.data.jsonl("data/chat.jsonl", {format = "chat"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
print(string.format("%d conversations for training, %d held out", train:len(), eval:len()))
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 4, max_len = args.max_len or 512,
  lr = args.lr or 1e-3, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s)", before.loss, after.loss, r.steps,
  r.tokens_per_s))
print("saved " .. m:save_adapter("adapter"))
