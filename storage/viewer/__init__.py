"""Static assets of the HTML viewer (CSS and the index page's script), read by storage/export_html.py."""
