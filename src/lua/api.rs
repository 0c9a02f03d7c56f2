//! The recipe API's one description: every function, method and options table ftl registers in
//! Lua, with LuaLS types and docs. `Opts` checks option keys and value types against it, and
//! `ftl types` writes the editor stubs from it, so the two cannot drift apart.

use mlua::Value;

/// One key of an options table (or of a result table, for the stubs).
pub struct Field {
    pub key: &'static str,
    /// a LuaLS type: `integer`, `number`, `string`, `boolean`, `"a"|"b"`, `T[]`, `A|B`,
    /// `fun(...)`, `table<K, V>`, a class below or an alias
    pub ty: &'static str,
    pub doc: &'static str,
}

/// A table with named fields: an options table a function takes, or a table a function returns.
pub struct Class {
    /// the LuaLS class name (`ftl.TrainOpts`)
    pub class: &'static str,
    /// how errors name the table (`ftl.train`); empty for result tables
    pub what: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
}

/// A function in a module table (`ftl.data.jsonl`) or a method of a handle (`ftl.Model:forward`).
pub struct Func {
    /// `ftl`, `ftl.data`, … for functions; `ftl.Model`, … for methods
    pub owner: &'static str,
    pub name: &'static str,
    pub method: bool,
    /// `(name, type)`; a name ending in `?` is optional
    pub params: &'static [(&'static str, &'static str)],
    pub ret: &'static str,
    pub doc: &'static str,
}

/// A handle type: userdata with methods (and read-only fields).
pub struct Handle {
    pub class: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
    /// LuaLS `@operator` lines: `add(ftl.Tensor|number): ftl.Tensor`
    pub operators: &'static [&'static str],
}

/// Type names that stand for a union.
pub const ALIASES: &[(&str, &str, &str)] = &[
    (
        "ftl.Pattern",
        "string|string[]",
        "Module paths: a list of names (a path matches when it equals one or ends with `.name`), a glob (`model.layers.{0..3}.mlp.*`, `**` across segments), `re:REGEX` (full match) or `all-linear`",
    ),
    (
        "ftl.Layers",
        "integer|integer[]|string",
        "Layer indices: `3`, `{0, 5}` or a range string `\"0-11\"`",
    ),
    ("ftl.Dtype", "\"f32\"|\"bf16\"|\"f16\"", "A floating-point dtype"),
    (
        "ftl.Ids",
        "ftl.Tensor|integer[]|integer[][]",
        "Token ids: a tensor, a list or a list of rows",
    ),
];

macro_rules! f {
    ($k:literal, $t:literal, $d:literal) => {
        Field {
            key: $k,
            ty: $t,
            doc: $d,
        }
    };
}

pub const LOAD: Class = Class {
    class: "ftl.LoadOpts",
    what: "ftl.load",
    doc: "Options of ftl.load",
    fields: &[
        f!(
            "dtype",
            "ftl.Dtype",
            "weights' dtype (default: the checkpoint's float type as f32; bf16 on GPU plans)"
        ),
        f!(
            "device",
            "\"cpu\"|\"cuda\"|\"auto\"|string",
            "`cpu`, `cuda`, `cuda:N` or `auto` (needs a CUDA build)"
        ),
        f!(
            "head",
            "boolean",
            "false loads a BERT classifier as its bare encoder (default true)"
        ),
        f!(
            "num_labels",
            "integer",
            "a BERT classifier with this many labels: a bare encoder checkpoint gets a new, randomly initialised head (HF's num_labels=)"
        ),
        f!(
            "seed",
            "integer",
            "seeds the weights a checkpoint lacks (default 0)"
        ),
    ],
};

pub const LOAD_ADAPTER: Class = Class {
    class: "ftl.LoadAdapterOpts",
    what: "ftl.load_adapter",
    doc: "Options of ftl.load_adapter",
    fields: &[
        f!("name", "string", "adapter name (default `default`)"),
        f!("trainable", "boolean", "train it further (default false)"),
    ],
};

pub const FORWARD: Class = Class {
    class: "ftl.ForwardOpts",
    what: "forward",
    doc: "Options of m:forward",
    fields: &[f!("token_type_ids", "ftl.Ids", "BERT's segment ids")],
};

pub const STATE_DICT: Class = Class {
    class: "ftl.StateDictOpts",
    what: "state_dict",
    doc: "Options of m:state_dict",
    fields: &[
        f!(
            "trainable",
            "boolean",
            "true: trainable tensors only; false: frozen only; nil: all"
        ),
        f!(
            "adapter",
            "string",
            "which adapter (default: the active ones)"
        ),
    ],
};

pub const LOAD_STATE_DICT: Class = Class {
    class: "ftl.LoadStateDictOpts",
    what: "load_state_dict",
    doc: "Options of m:load_state_dict",
    fields: &[
        f!(
            "strict",
            "boolean",
            "an unknown name is an error (default true)"
        ),
        f!("adapter", "string", "which adapter's names to accept"),
    ],
};

pub const GENERATE: Class = Class {
    class: "ftl.GenerateOpts",
    what: "generate",
    doc: "Options of m:generate",
    fields: &[
        f!("max_tokens", "integer", "new tokens at most (default 64)"),
        f!("temperature", "number", "0 is greedy (default 0)"),
        f!("top_p", "number", "nucleus sampling"),
        f!("seed", "integer", "sampling seed (default 0)"),
        f!("stop", "string|string[]", "stop at any of these strings"),
        f!(
            "min_tokens",
            "integer",
            "no end-of-sequence token before this many new tokens (HF's min_new_tokens; default 0)"
        ),
    ],
};

pub const SAVE_ADAPTER: Class = Class {
    class: "ftl.SaveAdapterOpts",
    what: "save_adapter",
    doc: "Options of m:save_adapter",
    fields: &[f!(
        "name",
        "string",
        "which adapter (default: the active one)"
    )],
};

pub const ENCODE: Class = Class {
    class: "ftl.EncodeOpts",
    what: "encode",
    doc: "Options of tokenizer:encode",
    fields: &[f!(
        "special",
        "boolean",
        "add BOS/EOS as the tokenizer's files say (default true)"
    )],
};

pub const DECODE: Class = Class {
    class: "ftl.DecodeOpts",
    what: "decode",
    doc: "Options of tokenizer:decode",
    fields: &[f!(
        "skip_special",
        "boolean",
        "leave special tokens out (default true)"
    )],
};

pub const SPLIT: Class = Class {
    class: "ftl.SplitOpts",
    what: "split",
    doc: "Options of d:split",
    fields: &[f!(
        "seed",
        "integer",
        "shuffle with this seed before splitting"
    )],
};

pub const DATA: Class = Class {
    class: "ftl.DataOpts",
    what: "ftl.data",
    doc: "Options of ftl.data.jsonl, ftl.data.text and ftl.data.from",
    fields: &[
        f!(
            "format",
            "\"text\"|\"instruction\"|\"chat\"|\"classification\"",
            "record format (jsonl default text; from: inferred from the fields)"
        ),
        f!(
            "template",
            "string",
            "prompt template for instruction data ({instruction}, {input})"
        ),
        f!(
            "bos",
            "boolean",
            "add BOS (default: as the tokenizer's files say)"
        ),
        f!(
            "eos",
            "boolean",
            "add EOS (default: as the tokenizer's files say)"
        ),
        f!("max_len", "integer", "cut examples to this many tokens"),
        f!(
            "block",
            "integer",
            "text data: tokens per block (default 512)"
        ),
    ],
};

pub const TOKENS: Class = Class {
    class: "ftl.TokensData",
    what: "ftl.data.tokens",
    doc: "Already tokenized data for ftl.data.tokens",
    fields: &[
        f!("input_ids", "ftl.Ids", "token ids, one row per example"),
        f!(
            "attention_mask",
            "ftl.Ids",
            "1 for real tokens, 0 for padding"
        ),
        f!(
            "labels",
            "ftl.Ids",
            "labels per token (-100 ignored) or one class per row"
        ),
        f!("token_type_ids", "ftl.Ids", "BERT's segment ids"),
    ],
};

pub const TRAIN: Class = Class {
    class: "ftl.TrainOpts",
    what: "ftl.train",
    doc: "Options of ftl.train (semantics as transformers' Trainer)",
    fields: &[
        f!("epochs", "integer", "passes over the data"),
        f!(
            "max_steps",
            "integer",
            "optimizer steps (instead of epochs)"
        ),
        f!(
            "batch_size",
            "integer",
            "examples per micro-batch (default 8)"
        ),
        f!(
            "grad_accum",
            "integer",
            "micro-batches per optimizer step (default 1)"
        ),
        f!("max_len", "integer", "cut examples to this many tokens"),
        f!("lr", "number", "peak learning rate (required)"),
        f!("optimizer", "\"adamw\"|\"sgd\"", "default adamw"),
        f!("momentum", "number", "SGD momentum (default 0)"),
        f!(
            "betas",
            "number[]",
            "AdamW's {beta1, beta2} (default {0.9, 0.999})"
        ),
        f!("eps", "number", "AdamW's epsilon (default 1e-8)"),
        f!(
            "weight_decay",
            "number",
            "decoupled weight decay on every trainable tensor (default 0.01)"
        ),
        f!(
            "no_decay",
            "ftl.Pattern",
            "parameters exempt from weight decay"
        ),
        f!("clip", "number", "max global gradient norm"),
        f!(
            "schedule",
            "\"constant\"|\"linear\"|\"cosine\"",
            "learning-rate schedule (default constant)"
        ),
        f!("warmup", "integer", "warm-up steps (default 0)"),
        f!("min_lr", "number", "the cosine schedule's floor"),
        f!("shuffle", "boolean", "shuffle each epoch (default true)"),
        f!(
            "group_by_length",
            "boolean",
            "batch examples of similar length (default false)"
        ),
        f!(
            "checkpoint",
            "boolean",
            "activation checkpointing: recompute each layer in the backward pass (default false)"
        ),
        f!("seed", "integer", "data order and dropout seed (default 0)"),
        f!(
            "eval",
            "ftl.EvalOpts",
            "held-out evaluation during training"
        ),
        f!(
            "save",
            "ftl.SaveOpts",
            "checkpoints during training (DIR/step-N, DIR/latest)"
        ),
        f!(
            "resume",
            "boolean|string",
            "continue from the newest complete checkpoint: true for save's directory, or a directory"
        ),
        f!(
            "on_nonfinite",
            "\"stop\"|\"skip\"",
            "a step with a non-finite loss or gradient stops the training (default) or is skipped"
        ),
        f!(
            "log_every",
            "integer",
            "progress line every N steps (default 10)"
        ),
        f!(
            "on_step",
            "fun(state: ftl.StepState): boolean?",
            "after each optimizer step; returning false stops"
        ),
        f!(
            "on_eval",
            "fun(state: ftl.EvalResult): boolean?",
            "after each evaluation; returning false stops"
        ),
    ],
};

pub const TRAIN_EVAL: Class = Class {
    class: "ftl.EvalOpts",
    what: "ftl.train eval",
    doc: "ftl.train's eval = {...}",
    fields: &[
        f!("data", "ftl.Dataset", "held-out data"),
        f!(
            "every",
            "integer",
            "evaluate every N steps (default: at the end)"
        ),
        f!(
            "batch_size",
            "integer",
            "evaluation batch size (default: the training one)"
        ),
    ],
};

pub const TRAIN_SAVE: Class = Class {
    class: "ftl.SaveOpts",
    what: "ftl.train save",
    doc: "ftl.train's save = {...}",
    fields: &[
        f!(
            "dir",
            "string",
            "checkpoint directory in the output directory (default checkpoints)"
        ),
        f!(
            "every",
            "integer",
            "save every N steps (default: at the end only; always when interrupted)"
        ),
        f!(
            "keep",
            "integer",
            "keep the newest K checkpoints (default all)"
        ),
    ],
};

pub const EVALUATE: Class = Class {
    class: "ftl.EvaluateOpts",
    what: "ftl.evaluate",
    doc: "Options of ftl.evaluate",
    fields: &[
        f!("batch_size", "integer", "default 8"),
        f!("max_len", "integer", "cut examples to this many tokens"),
    ],
};

pub const TENSOR_FROM: Class = Class {
    class: "ftl.TensorFromOpts",
    what: "ftl.tensor.from",
    doc: "Options of ftl.tensor.from",
    fields: &[f!("dtype", "ftl.Dtype|\"i64\"|\"u32\"", "default f32")],
};

pub const PLOT: Class = Class {
    class: "ftl.PlotOpts",
    what: "ftl.plot",
    doc: "A figure for ftl.plot",
    fields: &[
        f!("title", "string", "the figure's title"),
        f!("columns", "integer", "panels per row (default 2)"),
        f!("panels", "ftl.PlotPanel[]", "the panels, row by row"),
    ],
};

pub const PLOT_PANEL: Class = Class {
    class: "ftl.PlotPanel",
    what: "ftl.plot panel",
    doc: "One panel of a figure",
    fields: &[
        f!("title", "string", "the panel's title"),
        f!("x", "string", "the x axis' label"),
        f!("y", "string", "the y axis' label"),
        f!(
            "kind",
            "\"lines\"|\"points\"",
            "lines over each series' points (default), or labelled markers"
        ),
        f!("log_x", "boolean", "a log10 x axis (default false)"),
        f!("series", "ftl.PlotSeries[]", "the data"),
    ],
};

pub const PLOT_SERIES: Class = Class {
    class: "ftl.PlotSeries",
    what: "ftl.plot series",
    doc: "One series of a panel",
    fields: &[
        f!("name", "string", "the legend's (or the marker's) label"),
        f!("x", "number[]", "x values"),
        f!(
            "y",
            "number[]",
            "y values, as many (NaN or missing points are skipped)"
        ),
    ],
};

/// Every options table; `Opts` takes one of these.
pub const OPTIONS: &[&Class] = &[
    &LOAD,
    &LOAD_ADAPTER,
    &FORWARD,
    &STATE_DICT,
    &LOAD_STATE_DICT,
    &GENERATE,
    &SAVE_ADAPTER,
    &ENCODE,
    &DECODE,
    &SPLIT,
    &DATA,
    &TOKENS,
    &TRAIN,
    &TRAIN_EVAL,
    &TRAIN_SAVE,
    &EVALUATE,
    &TENSOR_FROM,
    &PLOT,
    &PLOT_PANEL,
    &PLOT_SERIES,
];

/// Tables functions return (stubs only; nothing checks them).
pub const RESULTS: &[Class] = &[
    Class {
        class: "ftl.TrainResult",
        what: "",
        doc: "What ftl.train returns",
        fields: &[
            f!("steps", "integer", "optimizer steps taken"),
            f!("epochs", "number", "passes over the data"),
            f!("loss", "number", "mean loss of the last optimizer step"),
            f!("eval_loss", "number?", "the last evaluation's loss"),
            f!("tokens", "integer", "label tokens trained on"),
            f!("tokens_per_s", "number", "throughput"),
            f!("time_s", "number", "wall time"),
            f!(
                "peak_mem_bytes",
                "integer",
                "this training's peak memory (RSS on CPU, device memory above the context on GPU)"
            ),
            f!(
                "recomputed_layers",
                "integer",
                "layers recomputed by checkpointing"
            ),
            f!("trainable", "integer", "trainable parameters"),
            f!("grad_bytes", "integer", "most gradient memory held at once"),
            f!("optimizer_bytes", "integer", "optimizer state"),
            f!("forward_s", "number", "time in forward passes"),
            f!("backward_s", "number", "time in backward passes"),
            f!("optimizer_s", "number", "time in optimizer steps"),
            f!(
                "skipped_steps",
                "integer",
                "steps skipped for a non-finite loss or gradient (on_nonfinite = \"skip\")"
            ),
            f!(
                "resumed_from",
                "integer",
                "the step the training resumed after (0: it started afresh)"
            ),
        ],
    },
    Class {
        class: "ftl.StepState",
        what: "",
        doc: "What on_step receives",
        fields: &[
            f!("step", "integer", "optimizer step (from 1)"),
            f!("total_steps", "integer", "steps planned"),
            f!("epoch", "number", "fractional epoch"),
            f!("loss", "number", "this step's loss"),
            f!("lr", "number", "this step's learning rate"),
            f!(
                "grad_norm",
                "number",
                "global gradient norm before clipping"
            ),
            f!("tokens", "integer", "label tokens so far"),
            f!("tokens_per_s", "number", "throughput"),
            f!("time_s", "number", "seconds since the start"),
        ],
    },
    Class {
        class: "ftl.EvalResult",
        what: "",
        doc: "What ftl.evaluate returns and on_eval receives",
        fields: &[
            f!("step", "integer?", "the training step (on_eval)"),
            f!("loss", "number", "mean loss per label token"),
            f!("perplexity", "number", "exp(loss)"),
            f!("accuracy", "number?", "classification data"),
        ],
    },
    Class {
        class: "ftl.ModelInfo",
        what: "",
        doc: "What m:info returns",
        fields: &[
            f!("arch", "string", "model_type"),
            f!("params", "integer", "base parameters"),
            f!("trainable", "integer", "trainable parameters"),
            f!("layers", "integer", "transformer layers"),
            f!("hidden", "integer", "hidden size"),
            f!("vocab", "integer", "vocabulary size"),
            f!("dtype", "string", "weights' dtype"),
            f!("device", "string", "cpu or cuda:N"),
        ],
    },
    Class {
        class: "ftl.ParamInfo",
        what: "",
        doc: "A row of m:parameters",
        fields: &[
            f!("name", "string", "parameter name"),
            f!("shape", "integer[]", "dimensions"),
            f!("trainable", "boolean", "trained by ftl.train"),
        ],
    },
    Class {
        class: "ftl.AdapterInfo",
        what: "",
        doc: "A row of m:adapters",
        fields: &[
            f!("name", "string", "adapter name"),
            f!(
                "method",
                "string",
                "lora, dora, ia3, bottleneck, prefix, prompt"
            ),
            f!("active", "boolean", "used in forward passes"),
            f!("targets", "string[]", "module paths"),
        ],
    },
];

pub const HANDLES: &[Handle] = &[
    Handle {
        class: "ftl.Model",
        doc: "A model (ftl.load, ftl.new)",
        fields: &[f!("tokenizer", "ftl.Tokenizer?", "the model's tokenizer")],
        operators: &[],
    },
    Handle {
        class: "ftl.Adapter",
        doc: "A PEFT method attached to a model",
        fields: &[f!("name", "string", "adapter name")],
        operators: &[],
    },
    Handle {
        class: "ftl.Tokenizer",
        doc: "A tokenizer",
        fields: &[],
        operators: &[],
    },
    Handle {
        class: "ftl.Dataset",
        doc: "A dataset (ftl.data.*)",
        fields: &[],
        operators: &[],
    },
    Handle {
        class: "ftl.Tensor",
        doc: "A tensor (+, -, *, / with tensors and numbers; #t is the element count)",
        fields: &[],
        operators: &[
            "add(ftl.Tensor|number): ftl.Tensor",
            "sub(ftl.Tensor|number): ftl.Tensor",
            "mul(ftl.Tensor|number): ftl.Tensor",
            "div(ftl.Tensor|number): ftl.Tensor",
            "unm: ftl.Tensor",
            "len: integer",
        ],
    },
];

/// The module tables and their docs.
pub const MODULES: &[(&str, &str)] = &[
    ("ftl", "ftl's recipe API"),
    ("ftl.data", "Datasets"),
    ("ftl.tensor", "Tensors and safetensors files"),
    ("ftl.fs", "Files inside the sandbox's readable paths"),
    ("ftl.json", "JSON"),
    ("ftl.tokenizer", "Tokenizers"),
];

/// The plain values in `ftl`.
pub const VALUES: &[Field] = &[
    f!(
        "args",
        "table<string, any>",
        "key=value arguments from the command line"
    ),
    f!("out_dir", "string", "the output directory"),
    f!("recipe_dir", "string", "the recipe's directory"),
    f!("version", "string", "ftl's version"),
];

macro_rules! func {
    ($o:literal, $n:literal, [$($p:literal : $t:literal),*], $r:literal, $d:literal) => {
        Func { owner: $o, name: $n, method: false, params: &[$(($p, $t)),*], ret: $r, doc: $d }
    };
}
macro_rules! method {
    ($o:literal, $n:literal, [$($p:literal : $t:literal),*], $r:literal, $d:literal) => {
        Func { owner: $o, name: $n, method: true, params: &[$(($p, $t)),*], ret: $r, doc: $d }
    };
}

pub const FUNCS: &[Func] = &[
    func!("ftl", "load", ["ref": "string", "opts?": "ftl.LoadOpts"], "ftl.Model", "Loads an HF model directory, a GGUF file or a hub id (org/name[@rev], from the HF cache), entirely frozen"),
    func!("ftl", "new", ["arch": "string", "config": "table<string, any>"], "ftl.Model", "A randomly initialised model of an architecture (config keys as in config.json, plus seed, dtype, device, tokenizer)"),
    func!("ftl", "load_adapter", ["m": "ftl.Model", "dir": "string", "opts?": "ftl.LoadAdapterOpts"], "ftl.Adapter", "Loads an HF PEFT or AdapterHub adapter directory"),
    func!("ftl", "train", ["m": "ftl.Model", "data": "ftl.Dataset", "opts": "ftl.TrainOpts"], "ftl.TrainResult", "Trains whatever is trainable"),
    func!("ftl", "evaluate", ["m": "ftl.Model", "data": "ftl.Dataset", "opts?": "ftl.EvaluateOpts"], "ftl.EvalResult", "Mean loss (and accuracy) on data"),
    func!("ftl.data", "jsonl", ["path": "string", "opts?": "ftl.DataOpts"], "ftl.Dataset", "Records from a JSONL file"),
    func!("ftl.data", "text", ["path": "string", "opts?": "ftl.DataOpts"], "ftl.Dataset", "Plain text (a path or a glob), tokenized and cut into blocks"),
    func!("ftl.data", "from", ["records": "table[]", "opts?": "ftl.DataOpts"], "ftl.Dataset", "Records from Lua tables"),
    func!("ftl.data", "tokens", ["t": "ftl.TokensData"], "ftl.Dataset", "Already tokenized data, used as it is, in order"),
    func!("ftl.tensor", "load", ["path": "string"], "table<string, ftl.Tensor>", "The tensors of a safetensors file"),
    func!("ftl.tensor", "metadata", ["path": "string"], "table<string, string>", "A safetensors file's metadata"),
    func!("ftl.tensor", "save", ["path": "string", "tensors": "table<string, ftl.Tensor>"], "string", "Writes a safetensors file in the output directory; returns its path"),
    func!("ftl.tensor", "from", ["values": "number|table", "opts?": "ftl.TensorFromOpts"], "ftl.Tensor", "A tensor from nested Lua tables"),
    func!("ftl.tensor", "zeros", ["shape": "integer[]"], "ftl.Tensor", "An f32 tensor of zeros"),
    func!("ftl.fs", "list", ["dir": "string"], "string[]", "The names in a directory, sorted"),
    func!("ftl.fs", "exists", ["path": "string"], "boolean", "Whether a readable path exists"),
    func!("ftl.fs", "is_dir", ["path": "string"], "boolean", "Whether a readable path is a directory"),
    func!("ftl.fs", "read", ["path": "string"], "string", "A text file's content"),
    func!("ftl.fs", "size", ["path": "string"], "integer", "The bytes of a file, or of every file under a directory"),
    func!(
        "ftl",
        "clock",
        [],
        "number",
        "Wall-clock seconds since the run started (for timing)"
    ),
    func!("ftl", "cache", ["key": "string", "fn": "fun(): any"], "any", "fn's results, kept across the runs of ftl watch (keyed by key, fn's code and ftl.args); outside watch, calls fn"),
    func!("ftl", "plot", ["path": "string", "figure": "ftl.PlotOpts"], "string", "Writes a figure of line or point panels as SVG in the output directory; returns its path"),
    func!("ftl.fs", "join", ["...": "string"], "string", "Joins path segments"),
    func!("ftl.json", "read", ["path": "string"], "any", "A JSON file as Lua values"),
    func!("ftl.json", "decode", ["text": "string"], "any", "A JSON string as Lua values"),
    func!(
        "ftl.tokenizer",
        "bytes",
        [],
        "ftl.Tokenizer",
        "A byte-level tokenizer (no file needed)"
    ),
    func!("ftl.tokenizer", "load", ["path": "string"], "ftl.Tokenizer", "A tokenizer.json file or a model directory's tokenizer"),
    func!("io", "read_file", ["path": "string"], "string", "A text file's content (inside the sandbox's readable paths)"),
    func!("io", "write_file", ["path": "string", "content": "string"], "string", "Writes a file in the output directory, atomically; returns its path"),
    method!(
        "ftl.Model",
        "info",
        [],
        "ftl.ModelInfo",
        "Architecture, sizes and parameter counts"
    ),
    method!("ftl.Model", "modules", ["pattern?": "ftl.Pattern"], "string[]", "Module paths (matching a pattern)"),
    method!("ftl.Model", "parameters", ["pattern?": "ftl.Pattern"], "ftl.ParamInfo[]", "Parameters with shapes and trainability"),
    method!("ftl.Model", "freeze", ["pattern?": "ftl.Pattern"], "nil", "Freezes base weights (nil: all)"),
    method!("ftl.Model", "unfreeze", ["pattern?": "ftl.Pattern"], "nil", "Unfreezes base weights to train them in full (nil: all)"),
    method!("ftl.Model", "forward", ["input_ids": "ftl.Ids", "attention_mask?": "ftl.Ids", "opts?": "ftl.ForwardOpts"], "ftl.Tensor", "Logits (or the last hidden state of a bare encoder)"),
    method!("ftl.Model", "state_dict", ["opts?": "ftl.StateDictOpts"], "table<string, ftl.Tensor>", "Tensors by PEFT's parameter names"),
    method!("ftl.Model", "load_state_dict", ["tensors": "table<string, ftl.Tensor>", "opts?": "ftl.LoadStateDictOpts"], "integer", "Sets tensors by name; returns how many"),
    method!("ftl.Model", "generate", ["prompt": "string", "opts?": "ftl.GenerateOpts"], "string, integer", "Generates a continuation; also returns the number of tokens generated"),
    method!(
        "ftl.Model",
        "merge",
        [],
        "nil",
        "Folds the active mergeable adapters into the base weights"
    ),
    method!("ftl.Model", "save", ["dir": "string"], "string", "Writes a complete HF model directory in the output directory"),
    method!("ftl.Model", "save_adapter", ["dir": "string", "opts?": "ftl.SaveAdapterOpts"], "string", "Writes one adapter in PEFT's (or AdapterHub's) format"),
    method!(
        "ftl.Model",
        "adapters",
        [],
        "ftl.AdapterInfo[]",
        "The attached adapters"
    ),
    method!("ftl.Model", "set_adapter", ["names": "string|string[]"], "nil", "Makes these adapters the active ones"),
    method!(
        "ftl.Model",
        "disable_adapters",
        [],
        "nil",
        "Runs the base model alone"
    ),
    method!(
        "ftl.Model",
        "enable_adapters",
        [],
        "nil",
        "Uses the active adapters again"
    ),
    method!("ftl.Model", "delete_adapter", ["name": "string"], "nil", "Detaches an adapter"),
    method!(
        "ftl.Adapter",
        "targets",
        [],
        "string[]",
        "The module paths it adapts"
    ),
    method!(
        "ftl.Adapter",
        "trainable",
        [],
        "integer",
        "Its trainable parameters"
    ),
    method!(
        "ftl.Adapter",
        "parameters",
        [],
        "ftl.ParamInfo[]",
        "Its parameters"
    ),
    method!("ftl.Tokenizer", "encode", ["text": "string", "opts?": "ftl.EncodeOpts"], "integer[]", "Token ids"),
    method!("ftl.Tokenizer", "decode", ["ids": "integer[]", "opts?": "ftl.DecodeOpts"], "string", "Text"),
    method!(
        "ftl.Tokenizer",
        "vocab_size",
        [],
        "integer",
        "Vocabulary size"
    ),
    method!("ftl.Tokenizer", "bos", [], "integer?", "BOS id"),
    method!("ftl.Tokenizer", "eos", [], "integer?", "EOS id"),
    method!("ftl.Tokenizer", "pad", [], "integer?", "Padding id"),
    method!("ftl.Dataset", "len", ["tokenizer?": "ftl.Tokenizer"], "integer", "Examples (text data needs the tokenizer to count blocks)"),
    method!("ftl.Dataset", "split", ["fraction": "number", "opts?": "ftl.SplitOpts"], "ftl.Dataset, ftl.Dataset", "Train and held-out parts"),
    method!(
        "ftl.Dataset",
        "rows",
        [],
        "table[]",
        "The records as tables"
    ),
    method!("ftl.Dataset", "shuffle", ["seed?": "integer"], "ftl.Dataset", "A shuffled copy"),
    method!("ftl.Tensor", "shape", [], "integer[]", "Dimensions"),
    method!("ftl.Tensor", "dtype", [], "string", "Element type"),
    method!("ftl.Tensor", "numel", [], "integer", "Element count"),
    method!("ftl.Tensor", "to_table", [], "table", "Nested Lua tables"),
    method!(
        "ftl.Tensor",
        "item",
        [],
        "number",
        "The value of a one-element tensor"
    ),
    method!("ftl.Tensor", "sum", [], "number", "Sum of all elements"),
    method!("ftl.Tensor", "mean", [], "number", "Mean of all elements"),
    method!("ftl.Tensor", "norm", [], "number", "Frobenius norm"),
    method!("ftl.Tensor", "max", [], "number", "Largest element"),
    method!("ftl.Tensor", "min", [], "number", "Smallest element"),
    method!(
        "ftl.Tensor",
        "abs",
        [],
        "ftl.Tensor",
        "Element-wise absolute value"
    ),
    method!("ftl.Tensor", "argmax", ["dim?": "integer"], "ftl.Tensor", "Indices of the maxima along dim (default the last)"),
    method!("ftl.Tensor", "narrow", ["dim": "integer", "start": "integer", "len": "integer"], "ftl.Tensor", "A slice along dim"),
    method!("ftl.Tensor", "reshape", ["shape": "integer[]"], "ftl.Tensor", "The same elements in another shape"),
    method!("ftl.Tensor", "to", ["dtype": "string"], "ftl.Tensor", "Converted to a dtype"),
    method!("ftl.Tensor", "rel_err", ["other": "ftl.Tensor|table"], "number", "‖t − other‖ / ‖other‖"),
];

/// The type `ty` stands for once aliases are expanded.
fn expand(ty: &str) -> &str {
    ALIASES
        .iter()
        .find(|(n, _, _)| *n == ty)
        .map_or(ty, |(_, t, _)| *t)
}

/// A function's return types (`ret` lists several separated by top-level commas).
pub fn returns(ret: &str) -> Vec<&str> {
    split_top(ret, ',')
}

/// `ty` split at its top-level `|` (not inside `fun(...)` or `table<...>`).
fn alternatives(ty: &str) -> Vec<&str> {
    split_top(ty, '|')
}

fn split_top(ty: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in ty.char_indices() {
        match c {
            '(' | '<' | '{' => depth += 1,
            ')' | '>' | '}' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(ty[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(ty[start..].trim());
    out
}

/// Whether a Lua value has the LuaLS type `ty` (string literals stand for any string: the code
/// that reads them names the valid choices).
pub fn matches(v: &Value, ty: &str) -> bool {
    let ty = expand(ty.trim());
    let alts = alternatives(ty);
    if alts.len() > 1 {
        return alts.iter().any(|a| matches(v, a));
    }
    if let Some(base) = ty.strip_suffix('?') {
        return v.is_nil() || matches(v, base);
    }
    if let Some(elem) = ty.strip_suffix("[]") {
        return match v {
            Value::Table(t) => t.clone().sequence_values::<Value>().all(|x| match x {
                Ok(x) => matches(&x, elem),
                Err(_) => false,
            }),
            _ => false,
        };
    }
    if ty.starts_with("fun(") {
        return matches!(v, Value::Function(_));
    }
    if ty.starts_with("table") {
        return matches!(v, Value::Table(_));
    }
    match ty {
        "any" => true,
        "nil" => v.is_nil(),
        "integer" => match v {
            Value::Integer(_) => true,
            Value::Number(n) => n.fract() == 0.0,
            _ => false,
        },
        "number" => matches!(v, Value::Integer(_) | Value::Number(_)),
        "string" => matches!(v, Value::String(_)),
        "boolean" => matches!(v, Value::Boolean(_)),
        "function" => matches!(v, Value::Function(_)),
        t if t.starts_with('"') => matches!(v, Value::String(_)),
        t if all_options().any(|c| c.class == t) => matches!(v, Value::Table(_)),
        t => match v {
            Value::UserData(u) => handle_is(u, t),
            _ => false,
        },
    }
}

fn handle_is(u: &mlua::AnyUserData, class: &str) -> bool {
    match class {
        "ftl.Model" => u.is::<super::model::ModelHandle>(),
        "ftl.Tokenizer" => u.is::<super::model::TokenizerHandle>(),
        "ftl.Adapter" => u.is::<super::peft::AdapterHandle>(),
        "ftl.Dataset" => u.is::<super::data::DataHandle>(),
        "ftl.Tensor" => u.is::<super::tensor::LTensor>(),
        _ => false,
    }
}

/// `ty` in words for an error: `a number`, `a string or a list of strings`.
pub fn describe_type(ty: &str) -> String {
    let ty = expand(ty.trim());
    let alts = alternatives(ty);
    if alts.len() > 1 {
        let words: Vec<String> = alts.iter().map(|a| describe_type(a)).collect();
        // string literals read better as a list of choices
        if alts.iter().all(|a| a.starts_with('"')) {
            return format!("one of {}", alts.join(", "));
        }
        let mut seen = Vec::new();
        for w in words {
            if !seen.contains(&w) {
                seen.push(w);
            }
        }
        return seen.join(" or ");
    }
    if let Some(base) = ty.strip_suffix('?') {
        return format!("{} or nil", describe_type(base));
    }
    if let Some(elem) = ty.strip_suffix("[]") {
        let e = describe_type(elem);
        let e = e
            .strip_prefix("an ")
            .or_else(|| e.strip_prefix("a "))
            .unwrap_or(&e);
        return match e.strip_prefix("list of ") {
            Some(inner) => format!("a list of lists of {inner}"),
            None => format!("a list of {e}s"),
        };
    }
    if ty.starts_with("fun(") {
        return "a function".into();
    }
    if ty.starts_with("table") {
        return "a table".into();
    }
    match ty {
        "integer" => "an integer".into(),
        "number" => "a number".into(),
        "string" => "a string".into(),
        "boolean" => "a boolean".into(),
        "function" => "a function".into(),
        "any" => "any value".into(),
        t if t.starts_with('"') => format!("the string {t}"),
        t if all_options().any(|c| c.class == t) => format!("a table ({t})"),
        t => format!("a {}", t.trim_start_matches("ftl.").to_lowercase()),
    }
}

/// The options table of `what` (`ftl.train`).
pub fn options(what: &str) -> Option<&'static Class> {
    all_options().find(|c| c.what == what)
}

/// Every options table: those above and one per registry method.
pub fn all_options() -> impl Iterator<Item = &'static Class> {
    OPTIONS
        .iter()
        .copied()
        .chain(registered().iter().map(|(c, _)| c))
}

/// Every function: those above and one per registry method (`ftl.loha`).
pub fn all_funcs() -> impl Iterator<Item = &'static Func> {
    FUNCS.iter().chain(registered().iter().map(|(_, f)| f))
}

/// The options every registry method's function takes before its own (PEFT's targeting).
const TARGETING: &[Field] = &[
    f!(
        "targets",
        "ftl.Pattern",
        "modules to adapt, or \"all-linear\" (default: PEFT's for the architecture)"
    ),
    f!("layers", "ftl.Layers", "only these layer indices"),
    f!("exclude", "ftl.Pattern", "modules to leave out"),
    f!(
        "modules_to_save",
        "ftl.Pattern",
        "modules trained in full as copies"
    ),
    f!("name", "string", "adapter name"),
];

/// The options table and the function of each registry method, made once: the names are built
/// from the method's (`ftl.LohaOpts`, `ftl.loha`), so they live as long as the program.
fn registered() -> &'static [(Class, Func)] {
    static R: std::sync::OnceLock<Vec<(Class, Func)>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        crate::peft::registry::entries()
            .map(|e| {
                let spec = e.spec();
                let mut cap = spec.name.to_string();
                cap[..1].make_ascii_uppercase();
                let class = leak(format!("ftl.{cap}Opts"));
                // prompt learning has no targets, only a name; block methods choose layers
                use crate::peft::registry::Entry;
                let common = |f: &&Field| match e {
                    Entry::Linear(_) => true,
                    Entry::Input(_) => f.key == "name",
                    Entry::Block(_) => f.key == "name" || f.key == "layers",
                };
                let fields: Vec<Field> = TARGETING
                    .iter()
                    .filter(common)
                    .map(|f| Field { ..*f })
                    .chain(spec.options.iter().map(|o| Field {
                        key: spec.lua_name(o.key),
                        ty: if o.ty == "modules" {
                            "ftl.Pattern"
                        } else {
                            o.ty
                        },
                        doc: if o.ty == "modules" || o.default == "null" {
                            o.doc
                        } else {
                            leak(format!("{} (default {})", o.doc, o.default))
                        },
                    }))
                    .collect();
                let c = Class {
                    class,
                    what: leak(format!("ftl.{}", spec.name)),
                    doc: leak(match e {
                        Entry::Block(_) => format!("Options of ftl.{} ({})", spec.name, spec.doc),
                        _ => format!(
                            "Options of ftl.{} (PEFT's {} config fields)",
                            spec.name, spec.peft_type
                        ),
                    }),
                    fields: Box::leak(fields.into_boxed_slice()),
                };
                let f = Func {
                    owner: "ftl",
                    name: spec.name,
                    method: false,
                    params: Box::leak(
                        vec![("m", "ftl.Model"), ("opts?", class)].into_boxed_slice(),
                    ),
                    ret: "ftl.Adapter",
                    doc: spec.doc,
                };
                (c, f)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{FromLua, FromLuaMulti, IntoLua, IntoLuaMulti, Lua, UserData};
    use std::collections::BTreeSet;

    /// Records the names a handle registers, without registering anything.
    #[derive(Default)]
    struct Names {
        methods: BTreeSet<String>,
        fields: BTreeSet<String>,
    }

    impl<T> mlua::UserDataMethods<T> for Names {
        fn add_method<M, A, R>(&mut self, name: impl Into<String>, _: M)
        where
            M: Fn(&Lua, &T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
            self.methods.insert(name.into());
        }
        fn add_method_mut<M, A, R>(&mut self, name: impl Into<String>, _: M)
        where
            M: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
            self.methods.insert(name.into());
        }
        fn add_function<F, A, R>(&mut self, name: impl Into<String>, _: F)
        where
            F: Fn(&Lua, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
            self.methods.insert(name.into());
        }
        fn add_function_mut<F, A, R>(&mut self, name: impl Into<String>, _: F)
        where
            F: FnMut(&Lua, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
            self.methods.insert(name.into());
        }
        fn add_meta_method<M, A, R>(&mut self, _: impl Into<String>, _: M)
        where
            M: Fn(&Lua, &T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
        }
        fn add_meta_method_mut<M, A, R>(&mut self, _: impl Into<String>, _: M)
        where
            M: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
        }
        fn add_meta_function<F, A, R>(&mut self, _: impl Into<String>, _: F)
        where
            F: Fn(&Lua, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
        }
        fn add_meta_function_mut<F, A, R>(&mut self, _: impl Into<String>, _: F)
        where
            F: FnMut(&Lua, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            A: FromLuaMulti,
            R: IntoLuaMulti,
        {
        }
    }

    impl<T> mlua::UserDataFields<T> for Names {
        fn add_field<V: IntoLua + 'static>(&mut self, name: impl Into<String>, _: V) {
            self.fields.insert(name.into());
        }
        fn add_field_method_get<M, R>(&mut self, name: impl Into<String>, _: M)
        where
            M: Fn(&Lua, &T) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            R: IntoLua,
        {
            self.fields.insert(name.into());
        }
        fn add_field_method_set<M, A>(&mut self, name: impl Into<String>, _: M)
        where
            M: FnMut(&Lua, &mut T, A) -> mlua::Result<()> + mlua::MaybeSend + 'static,
            A: FromLua,
        {
            self.fields.insert(name.into());
        }
        fn add_field_function_get<F, R>(&mut self, name: impl Into<String>, _: F)
        where
            F: Fn(&Lua, mlua::AnyUserData) -> mlua::Result<R> + mlua::MaybeSend + 'static,
            R: IntoLua,
        {
            self.fields.insert(name.into());
        }
        fn add_field_function_set<F, A>(&mut self, name: impl Into<String>, _: F)
        where
            F: FnMut(&Lua, mlua::AnyUserData, A) -> mlua::Result<()> + mlua::MaybeSend + 'static,
            A: FromLua,
        {
            self.fields.insert(name.into());
        }
        fn add_meta_field<V: IntoLua + 'static>(&mut self, _: impl Into<String>, _: V) {}
        fn add_meta_field_with<F, R>(&mut self, _: impl Into<String>, _: F)
        where
            F: FnOnce(&Lua) -> mlua::Result<R> + 'static,
            R: IntoLua,
        {
        }
    }

    fn names_of<T: UserData>() -> Names {
        let mut n = Names::default();
        T::add_methods(&mut n);
        T::add_fields(&mut n);
        n
    }

    fn described(owner: &str) -> BTreeSet<String> {
        all_funcs()
            .filter(|f| f.owner == owner)
            .map(|f| f.name.to_string())
            .collect()
    }

    #[test]
    fn every_registered_function_is_described_and_every_described_one_exists() {
        let env = crate::lua::Env::new(std::path::Path::new("/nonexistent/r.lua"), None, false);
        let rt = crate::lua::Runtime::new(env, &[]).unwrap();
        let g = rt.lua.globals();
        let ftl: mlua::Table = g.get("ftl").unwrap();
        for (module, _) in MODULES {
            let t: mlua::Table = if *module == "ftl" {
                ftl.clone()
            } else {
                ftl.get(module.trim_start_matches("ftl.")).unwrap()
            };
            let mut live = BTreeSet::new();
            for (k, v) in t.pairs::<String, Value>().flatten() {
                match v {
                    Value::Function(_) => {
                        live.insert(k);
                    }
                    Value::Table(_) if *module == "ftl" => {
                        let sub = format!("ftl.{k}");
                        let known = MODULES.iter().any(|(m, _)| *m == sub)
                            || VALUES.iter().any(|f| f.key == k);
                        assert!(known, "ftl.{k}: a table not in api::MODULES or VALUES");
                    }
                    _ => assert!(
                        VALUES.iter().any(|f| f.key == k),
                        "{module}.{k}: a value not in api::VALUES"
                    ),
                }
            }
            assert_eq!(live, described(module), "{module}: registered vs described");
        }
        // the sandbox's own io functions; the others keep Lua's names (and refuse, or write)
        let io: mlua::Table = g.get("io").unwrap();
        let lua_io = [
            "close", "flush", "input", "lines", "open", "output", "popen", "read", "tmpfile",
            "type", "write",
        ];
        let live: BTreeSet<String> = io
            .pairs::<String, Value>()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| !lua_io.contains(&k.as_str()))
            .collect();
        assert_eq!(live, described("io"));
    }

    #[test]
    fn every_handle_method_and_field_is_described() {
        use crate::lua::{data, model, peft, tensor};
        let cases = [
            ("ftl.Model", names_of::<model::ModelHandle>()),
            ("ftl.Tokenizer", names_of::<model::TokenizerHandle>()),
            ("ftl.Adapter", names_of::<peft::AdapterHandle>()),
            ("ftl.Dataset", names_of::<data::DataHandle>()),
            ("ftl.Tensor", names_of::<tensor::LTensor>()),
        ];
        assert_eq!(cases.len(), HANDLES.len());
        for (class, names) in cases {
            assert!(!names.methods.is_empty(), "{class}: no methods collected");
            assert_eq!(names.methods, described(class), "{class}: methods");
            let h = HANDLES.iter().find(|h| h.class == class).unwrap();
            let fields: BTreeSet<String> = h.fields.iter().map(|f| f.key.to_string()).collect();
            assert_eq!(names.fields, fields, "{class}: fields");
        }
    }

    #[test]
    fn every_type_named_is_known() {
        let known = |t: &str| -> bool {
            let t = t.trim().trim_end_matches('?');
            let t = t.trim_end_matches("[]").trim_end_matches("[]");
            matches!(
                t,
                "integer" | "number" | "string" | "boolean" | "any" | "nil" | "table"
            ) || t.starts_with('"')
                || t.starts_with("fun(")
                || t.starts_with("table<")
                || ALIASES.iter().any(|(n, _, _)| *n == t)
                || all_options().any(|c| c.class == t)
                || RESULTS.iter().any(|c| c.class == t)
                || HANDLES.iter().any(|h| h.class == t)
        };
        let all = |ty: &str| alternatives(expand(ty)).iter().all(|a| known(a));
        for c in all_options().chain(RESULTS.iter()) {
            for f in c.fields {
                assert!(all(f.ty), "{}.{}: unknown type {}", c.class, f.key, f.ty);
            }
        }
        for f in all_funcs() {
            for (p, ty) in f.params {
                assert!(all(ty), "{}.{} {p}: unknown type {ty}", f.owner, f.name);
            }
            for r in returns(f.ret) {
                assert!(all(r), "{}.{} returns unknown type {r}", f.owner, f.name);
            }
        }
        let mut whats: Vec<&str> = all_options().map(|c| c.what).collect();
        whats.sort();
        whats.dedup();
        assert_eq!(
            whats.len(),
            all_options().count(),
            "two options tables share a name"
        );
    }

    #[test]
    fn values_match_types_as_luals_reads_them() {
        let lua = Lua::new();
        let v = |src: &str| -> Value { lua.load(src).eval().unwrap() };
        assert!(matches(&v("3"), "integer"));
        assert!(matches(&v("3.0"), "integer"));
        assert!(!matches(&v("3.5"), "integer"));
        assert!(!matches(&v("'3'"), "integer"));
        assert!(matches(&v("3"), "number"));
        assert!(matches(&v("'q_proj'"), "ftl.Pattern"));
        assert!(matches(&v("{'q_proj', 'v_proj'}"), "ftl.Pattern"));
        assert!(!matches(&v("{'q_proj', 4}"), "ftl.Pattern"));
        assert!(matches(&v("{{1, 2}, {3, 4}}"), "ftl.Ids"));
        assert!(matches(&v("'0-11'"), "ftl.Layers"));
        assert!(matches(
            &v("function() end"),
            "fun(state: ftl.StepState): boolean?"
        ));
        assert!(!matches(&v("true"), "fun(state: ftl.StepState): boolean?"));
        assert!(matches(&v("{data = 1}"), "ftl.EvalOpts"));
        assert!(!matches(&v("{}"), "ftl.Dataset"));
        assert_eq!(describe_type("integer"), "an integer");
        assert_eq!(
            describe_type("ftl.Pattern"),
            "a string or a list of strings"
        );
        assert_eq!(
            describe_type("\"adamw\"|\"sgd\""),
            "one of \"adamw\", \"sgd\""
        );
        assert_eq!(
            describe_type("ftl.Ids"),
            "a tensor or a list of integers or a list of lists of integers"
        );
        assert_eq!(describe_type("ftl.Dataset"), "a dataset");
    }

    #[test]
    fn the_stubs_are_lua_and_name_every_function_and_option() {
        let s = crate::types::stubs();
        Lua::new()
            .load(s.as_str())
            .into_function()
            .expect("the stubs parse as Lua");
        for f in all_funcs() {
            let owner = if f.method {
                format!("{}:", f.owner.trim_start_matches("ftl."))
            } else {
                format!("{}.", f.owner)
            };
            assert!(
                s.contains(&format!("function {owner}{}(", f.name)),
                "{owner}{} missing",
                f.name
            );
        }
        for c in all_options() {
            assert!(s.contains(&format!("---@class {}\n", c.class)));
            for fl in c.fields {
                assert!(
                    s.contains(&format!("---@field {}? {} ", fl.key, fl.ty)),
                    "{}.{} missing",
                    c.class,
                    fl.key
                );
            }
        }
    }
}
