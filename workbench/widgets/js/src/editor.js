// The layer editor's front end: CodeMirror 6 on the model's `text`, Python highlighting,
// Shift-Enter or the Apply button sends {type: "apply", text} to Python, which saves, compiles
// and reports back through `error_line` / `error_message` (shown inline, on the offending line).
import { EditorView, basicSetup } from "codemirror";
import { python } from "@codemirror/lang-python";
import { keymap } from "@codemirror/view";
import { Prec } from "@codemirror/state";
import { setDiagnostics, lintGutter } from "@codemirror/lint";

function render({ model, el }) {
  el.classList.add("workbench-editor");
  const bar = document.createElement("div");
  bar.className = "workbench-editor-bar";
  const apply = document.createElement("button");
  apply.textContent = "Apply (Shift-Enter)";
  apply.className = "workbench-editor-apply jupyter-button";
  const status = document.createElement("span");
  status.className = "workbench-editor-status";
  bar.append(apply, status);
  const host = document.createElement("div");
  host.className = "workbench-editor-code";
  host.style.border = "1px solid #ccc";
  host.style.maxHeight = "480px";
  host.style.overflow = "auto";
  // JupyterLab's notebook shortcuts (Shift-Enter runs the cell) must not fire while typing here.
  host.setAttribute("data-lm-suppress-shortcuts", "true");
  el.append(bar, host);

  const send = () => {
    const text = view.state.doc.toString();
    model.set("text", text);
    model.save_changes();
    model.send({ type: "apply", text });
    status.textContent = "applying...";
    return true;
  };
  const view = new EditorView({
    doc: model.get("text"),
    parent: host,
    extensions: [
      Prec.highest(keymap.of([{ key: "Shift-Enter", run: send }])),
      basicSetup,
      python(),
      lintGutter(),
      EditorView.updateListener.of((update) => {
        if (update.docChanged) {
          model.set("text", update.state.doc.toString());
          model.save_changes();
        }
      }),
    ],
  });
  apply.addEventListener("click", send);

  // Text replaced from Python (another layer chosen, the file changed on disk).
  const onText = () => {
    const text = model.get("text");
    if (text !== view.state.doc.toString()) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    }
  };
  const onError = () => {
    const line = model.get("error_line");
    const message = model.get("error_message");
    status.textContent = model.get("status");
    const diagnostics = [];
    if (message && line > 0 && line <= view.state.doc.lines) {
      const l = view.state.doc.line(line);
      diagnostics.push({ from: l.from, to: l.to, severity: "error", message });
    }
    view.dispatch(setDiagnostics(view.state, diagnostics));
  };
  // Edits made to the file outside the editor: Python compares the file's mtime on each poll.
  const onFocus = () => model.send({ type: "poll" });
  const timer = setInterval(() => model.send({ type: "poll" }), model.get("poll_ms"));
  host.addEventListener("focusin", onFocus);
  model.on("change:text", onText);
  model.on("change:error_line", onError);
  model.on("change:error_message", onError);
  model.on("change:status", onError);
  onError();
  return () => {
    model.off("change:text", onText);
    model.off("change:error_line", onError);
    model.off("change:error_message", onError);
    model.off("change:status", onError);
    host.removeEventListener("focusin", onFocus);
    clearInterval(timer);
    view.destroy();
  };
}

export default { render };
