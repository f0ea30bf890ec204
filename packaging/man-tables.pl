#!/usr/bin/perl
# Filters go-md2man's roff so that its tables fit a terminal: go-md2man
# leaves short cells unfilled, and a table wider than the page makes tbl
# warn and the page overflow. Here every long cell, and every cell of the
# last column, becomes a text block (T{ ... T}) that tbl fills, and the
# last column takes the rest of the line (the `x` modifier). Inside a
# table, lines are not justified (narrow columns could not be).
use strict;
use warnings;

my @out;
my @table;    # lines of the table being read, from its format line on
my $in = 0;

sub flush_table {
    my @lines = @_;
    # The format: options ("allbox;"), then one line per row kind; the last
    # ends with ".". Rows follow.
    my @fmt;
    while (@lines) {
        my $l = shift @lines;
        push @fmt, $l;
        last if $l =~ /\.\s*$/;
    }
    my $body = join("\n", @lines);
    my @rows = ([]);
    # A cell is a text block or a line's run up to a tab; go-md2man may
    # put the tab after a block's T} on the next line.
    while ($body =~ /\G(?:T\{\n(.*?)\nT\}(?:\n(?=\t))?|([^\t\n]*))(\t|\n|\z)/gsc) {
        my $cell = defined $1 ? $1 : $2;
        push @{ $rows[-1] }, $cell;
        last if $3 eq '';
        push @rows, [] if $3 eq "\n";
    }
    pop @rows while @rows && !@{ $rows[-1] };
    my @head = @{ $rows[0] };
    if (@head >= 5) {
        # Too many columns for 80: one entry per row instead, the first
        # cell as its tag, the middle ones as "header: value", the last as
        # its text.
        my @list = (".TE_LIST");
        for my $r (1 .. $#rows) {
            my @cells = @{ $rows[$r] };
            push @list, ".TP", $cells[0];
            my @mid = map { "$head[$_]: $cells[$_]" } grep { $cells[$_] ne '' } 1 .. $#cells - 1;
            push @list, join("; ", @mid) . ".", ".br" if @mid;
            push @list, $cells[-1];
        }
        return map { "$_\n" } @list;
    }
    for my $i (1 .. $#fmt) {
        $fmt[$i] =~ s/l(\s*\.?\s*)$/lx$1/;
    }
    my @emitted = @fmt;
    for my $r (0 .. $#rows) {
        my @cells = @{ $rows[$r] };
        for my $c (0 .. $#cells) {
            next if $r == 0;    # the header row stays as it is
            my $visible = $cells[$c];
            $visible =~ s/\\f[A-Z]|\\f\(..|\\&//g;
            if ($c == $#cells || ($c > 0 && length($visible) > 14)) {
                $cells[$c] = "T{\n$cells[$c]\nT}";
            }
        }
        push @emitted, join("\t", @cells);
    }
    return map { "$_\n" } @emitted;
}

while (my $line = <STDIN>) {
    if ($line =~ /^\.TS/) {
        $in = 1;
        @table = ();
        push @out, ".ad l\n", $line;
    } elsif ($in && $line =~ /^\.TE/) {
        chomp(my @t = @table);
        my @t2 = flush_table(@t);
        if ($t2[0] eq ".TE_LIST\n") {
            # A list after all: drop the table's opening.
            pop @out;
            pop @out;
            push @out, @t2[1 .. $#t2];
        } else {
            push @out, @t2, $line, ".ad b\n";
        }
        $in = 0;
    } elsif ($in) {
        push @table, $line;
    } else {
        # A text line starting with ' would be read as a request.
        $line =~ s/^'/\\&'/;
        push @out, $line;
    }
}
print @out;
