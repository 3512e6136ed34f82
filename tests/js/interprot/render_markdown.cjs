// node render_markdown.cjs TEXT: the HTML InterProt's <Markdown> (markdown-to-jsx) makes of TEXT.
const React = require("react");
const { renderToStaticMarkup } = require("react-dom/server");
const Markdown = require("markdown-to-jsx");

process.stdout.write(renderToStaticMarkup(React.createElement(Markdown, null, process.argv[2])));
